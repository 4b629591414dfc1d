"""Local proxy state files (read by ``ssh-ipykernel status``)."""
import os
import subprocess
import sys

from ssh_ipykernel.state import prune, read_states, remove_state, state_path, write_state


def test_states_of_running_proxies_are_listed_and_dead_ones_pruned(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        write_state("k-live", {"pid": live.pid, "kernel_id": "k-live", "started": 2.0}, str(tmp_path))
        write_state("k-old", {"pid": os.getpid(), "kernel_id": "k-old", "started": 1.0}, str(tmp_path))
        write_state("k-dead", {"pid": dead.pid, "kernel_id": "k-dead"}, str(tmp_path))
        (tmp_path / "proxy-garbage.json").write_text("{not json")
        assert [s["kernel_id"] for s in read_states(str(tmp_path))] == ["k-old", "k-live"]
        removed = prune(str(tmp_path))
        assert sorted(os.path.basename(p) for p in removed) == ["proxy-garbage.json", "proxy-k-dead.json"]
        assert os.path.exists(state_path("k-live", str(tmp_path)))
        remove_state("k-live", str(tmp_path))
        remove_state("k-live", str(tmp_path))  # twice is fine
        assert not os.path.exists(state_path("k-live", str(tmp_path)))
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    finally:
        live.kill()
        live.wait()
