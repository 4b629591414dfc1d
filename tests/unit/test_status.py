"""``ssh-ipykernel status`` over real proxy state files (state.py), for live and dead proxies."""
import json
import re
import os
import subprocess
import sys
import time

import pytest

from ssh_ipykernel import state
from ssh_ipykernel.status import format_duration


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return tmp_path / "runtime"


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def status(*args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", "from ssh_ipykernel.cli import main; main()", "status", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_no_kernels(runtime):
    r = status()
    assert r.returncode == 0
    assert r.stdout.strip() == "No SSH kernels are running from this machine."
    assert json.loads(status("--json").stdout) == []


def test_lists_running_proxies_and_prunes_dead_ones(runtime, live_pid):
    now = time.time()
    state.write_state("5b0c1e2a-live", {
        "pid": live_pid, "host": "btest", "kernel_id": "5b0c1e2a-live", "connection_file": "/x/kernel-5b0c1e2a-live.json",
        "transport": "openssh", "state": "up", "reconnects": 2, "started": now - 3725, "since": now - 60,
        "remote_pid": 4242, "remote_hostname": "sik-btest", "remote_connection_file": "/home/u/kernel-ssh-5b.json",
        "warm": True})
    state.write_state("77aa-reconnecting", {
        "pid": live_pid, "host": "gpu", "kernel_id": "77aa-reconnecting", "state": "reconnecting", "reconnects": 0,
        "started": now - 30, "since": now - 12})
    dead = state.write_state("dead-one", {"pid": dead_pid(), "host": "old", "kernel_id": "dead-one", "state": "up",
                                          "started": now - 99})
    r = status()
    assert r.returncode == 0, r.stderr
    lines, note = r.stdout.split("\n\n", 1)
    assert "ssh_ipykernel-warm-pool" in note  # where to see the hosts' warm pools
    lines = lines.splitlines()
    assert lines[0].split() == ["HOST", "KERNEL", "ID", "REMOTE", "PID", "UPTIME", "TUNNEL", "RECONNECTS", "PROXY", "PID"]
    assert len(lines) == 3, r.stdout
    first = lines[1]  # oldest first
    for word in ("btest (sik-btest)", "5b0c1e2a-live", "4242 (warm)", "1 h 02 min", " up ", " 2 ", str(live_pid)):
        assert word in first, (word, first)
    assert "gpu" in lines[2] and re.search(r"reconnecting for 1[2-9] s", lines[2]) and " - " in lines[2]
    assert "old" not in r.stdout and "dead-one" not in r.stdout
    assert not os.path.exists(dead), "the state file of a dead proxy is pruned"

    data = json.loads(status("--json").stdout)
    assert [k["kernel_id"] for k in data] == ["5b0c1e2a-live", "77aa-reconnecting"]
    assert data[0]["remote_pid"] == 4242 and 3724 < data[0]["uptime"] < 3800 and data[0]["reconnects"] == 2


def test_a_torn_state_file_is_skipped(runtime, live_pid):
    state.write_state("ok", {"pid": live_pid, "host": "btest", "kernel_id": "ok", "state": "up", "started": time.time()})
    with open(state.state_path("torn"), "w") as f:
        f.write('{"pid": ')
    r = status()
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert len(r.stdout.split("\n\n")[0].splitlines()) == 2


@pytest.mark.parametrize("seconds, text", [(None, "?"), (-5, "0 s"), (59, "59 s"), (61, "1 min"),
                                           (3600 + 120, "1 h 02 min"), (2 * 86400 + 3 * 3600, "2 d 03 h")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text
