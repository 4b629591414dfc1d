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
    assert json.loads(status("--json").stdout) == {"kernels": [], "logins": [], "warm_pools": []}


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
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["HOST", "KERNEL", "ID", "REMOTE", "PID", "UPTIME", "TUNNEL", "RECONNECTS", "PROXY", "PID"]
    assert len(lines) == 3, r.stdout
    first = lines[1]  # oldest first
    for word in ("btest (sik-btest)", "5b0c1e2a-live", "4242 (warm)", "1 h 02 min", " up ", " 2 ", str(live_pid)):
        assert word in first, (word, first)
    assert "gpu" in lines[2] and re.search(r"reconnecting for 1[2-9] s", lines[2]) and " - " in lines[2]
    assert "old" not in r.stdout and "dead-one" not in r.stdout
    assert not os.path.exists(dead), "the state file of a dead proxy is pruned"

    data = json.loads(status("--json").stdout)["kernels"]
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


# -- warm pools -----------------------------------------------------------------------------------
def pool_record(kernel_id, pid, **fields):
    return {"host": "btest", "ssh_config": None, "transport": "openssh", "python": "/env/bin/python",
            "runtime_dir": "/home/u/.local/share/jupyter/runtime", "socket": "/home/u/rt/warm-a.sock",
            "warm": 600.0, "pid": pid, "kernel_id": kernel_id, "started": time.time(), **fields}


def reported(pid=4242, kernels=(), ends_in=420.0, state_="serving", socket="/home/u/rt/warm-a.sock"):
    return {"pid": pid, "python": "/env/bin/python", "rss_kb": 38 * 1024 + 300, "kernels": list(kernels),
            "idle": 600.0, "ends_in": ends_in, "serving": state_ == "serving", "state": state_, "socket": socket}


def test_pools_a_host_reports_are_rows_with_memory_kernels_and_their_end(runtime, live_pid):
    from ssh_ipykernel.remotepools import HostPools
    from ssh_ipykernel.status import pool_rows, unasked_lines, warm_pools

    state.record_pool("k-live", pool_record("k-live", live_pid))
    state.record_pool("k-gone", pool_record("k-gone", dead_pid(), socket="/home/u/rt/warm-gone.sock", ended=time.time()))
    asked = []

    def ask(targets):
        asked.extend(targets)
        return [HostPools(t, pools=[reported(), reported(pid=4300, kernels=[4301, 4302], ends_in=None,
                                                         socket="/home/u/rt/warm-b.sock"),
                                    reported(pid=4400, kernels=[4401], ends_in=None, state_="retired", socket=None)],
                          connected=True, hostname="sik-btest") for t in targets]

    now = time.time()
    pools = warm_pools(now=now, ask=ask)
    assert [(t.host, t.python, t.runtime_dirs) for t in asked] == [
        ("btest", "/env/bin/python", ("/home/u/.local/share/jupyter/runtime",))], "one question per host"
    assert [p["pid"] for p in pools] == [4242, 4300, 4400]
    first = pools[0]
    assert first["asked"] and first["rss_mb"] == 38.3 and first["kernels"] == 0 and first["ends_at"] == now + 420
    assert pools[1]["kernel_pids"] == [4301, 4302] and pools[1]["ends_at"] is None
    rows = pool_rows(pools, now=now)
    assert rows[0][:5] == ["btest (sik-btest)", "4242", "/env/bin/python", "38 MB", "0"]
    assert rows[0][5] == "in 7 min (%s)" % time.strftime("%H:%M", time.localtime(now + 420))
    assert rows[1][4:] == ["2", "while kernels run"]
    assert rows[2][4:] == ["1", "with its last kernel (retired)"]
    assert unasked_lines(pools) == []
    # The host says the pool of a proxy that ended is gone: its record goes; a running one's stays.
    assert sorted(r["kernel_id"] for r in state.pool_records()) == ["k-live"]


def test_a_host_without_a_connection_up_is_not_asked_and_its_pools_end_is_expected(runtime, live_pid):
    from ssh_ipykernel.remotepools import HostPools
    from ssh_ipykernel.status import pool_rows, unasked_lines, warm_pools

    now = time.time()
    state.record_pool("a", pool_record("a", dead_pid(), started=now - 100))
    state.end_pool_record("a", now=now - 60)
    state.record_pool("b", pool_record("b", dead_pid(), host="gpu", warm=120.0, transport="paramiko"))
    state.end_pool_record("b", now=now - 10)
    state.record_pool("c", pool_record("c", live_pid, host="hpc"))
    state.record_pool("d", pool_record("d", dead_pid(), host="old"))  # killed: no end
    pools = warm_pools(now=now, ask=lambda targets: [HostPools(t, reason="not connected") for t in targets])
    assert all(not p["asked"] for p in pools) and pool_rows(pools) == []
    by_host = {p["host"]: p for p in pools}
    assert by_host["btest"]["expected_end"] == now - 60 + 600 and by_host["hpc"]["running"]
    lines = unasked_lines(pools, now=now)
    assert lines == [
        "btest: not connected, pool expected to end by %s" % time.strftime("%H:%M", time.localtime(now + 540)),
        "gpu: not shown for paramiko (its connections are the kernels' own; no shared one to ask through), "
        "pool expected to end by %s" % time.strftime("%H:%M", time.localtime(now + 110)),
        "hpc: not connected, pool kept while its kernels run",
        "old: not connected, pool: end not known (a kernel's proxy was killed)",
    ]
    assert len(state.pool_records()) == 4, "records of hosts not asked stay"


def test_status_shows_the_warm_pools_section_and_json_keys(runtime, live_pid):
    state.record_pool("k", pool_record("k", live_pid, host="nohost-sik.invalid"))
    r = status()
    assert r.returncode == 0, r.stderr
    assert "Warm pools" in r.stdout and "nohost-sik.invalid: not connected, pool kept while its kernels run" in r.stdout
    data = json.loads(status("--json").stdout)
    assert set(data) == {"kernels", "logins", "warm_pools"}
    assert data["warm_pools"][0]["host"] == "nohost-sik.invalid" and not data["warm_pools"][0]["asked"]


@pytest.mark.parametrize("pool, text", [
    ({"state": "serving", "ends_in": 42.0, "ends_at": 0.0}, "in 42 s ("),
    ({"state": "serving", "ends_in": None, "ends_at": None}, "while kernels run"),
    ({"state": "retired", "kernels": 0}, "now (retired)"),
    ({"state": "starting"}, "? (starting)"),
])
def test_pool_end_texts(pool, text):
    from ssh_ipykernel.status import pool_ends_text

    assert pool_ends_text(pool).startswith(text)


def test_pool_targets_one_per_connection_and_sudo_with_the_newest_python():
    from ssh_ipykernel.status import pool_targets

    records = [pool_record("a", 1, started=1.0, python="/old/bin/python", runtime_dir="/r1"),
               pool_record("b", 2, started=2.0, python="/new/bin/python", runtime_dir="/r2", pre_command="module load x"),
               pool_record("c", 3, started=3.0, sudo=True, runtime_dir="/root/rt"),
               pool_record("d", 4, started=4.0, ssh_config="/other/config")]
    targets = {(t.host, t.ssh_config, t.sudo): t for t in pool_targets(records)}
    assert len(targets) == 3
    plain = targets[("btest", None, False)]
    assert (plain.python, plain.runtime_dirs, plain.pre_command) == ("/new/bin/python", ("/r1", "/r2"), "module load x")
    assert targets[("btest", None, True)].runtime_dirs == ("/root/rt",)


def test_an_agent_server_is_a_row_of_the_warm_pools_table():
    from ssh_ipykernel.status import pool_rows

    server = {"asked": True, "host": "btest", "pid": 77, "python": "/opt/env/bin/python", "rss_mb": 14.6,
              "kernels": 0, "state": "restart server", "ends_in": None, "ends_at": None}
    assert pool_rows([server]) == [["btest", "77", "/opt/env/bin/python (restart server)", "15 MB", "-",
                                    "--warm after the host's last kernel"]]
