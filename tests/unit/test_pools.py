"""The warm pools' lister (remote/pools.py) and the pool's ``info`` request (remote/warmpool.py),
with a pool on this machine; over SSH in tests/integration/test_warm.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ssh_ipykernel.remote import pools, warm
from ssh_ipykernel.remote.protocol import AgentParams, BootstrapError, Event
from ssh_ipykernel.session.bundle import LOADER, agent_stdin, pools_source


def start_pool(tmp_path, idle: float) -> str:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()), SIK_POOLS_UNIT=str(tmp_path))
    path = warm.pool_socket(str(runtime), sys.executable, env, str(tmp_path))
    notes = []
    assert warm.ensure_pool(path, python=sys.executable, env=env, cwd=str(tmp_path), idle=idle, timeout=30,
                            note=notes.append), notes
    return path


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.timeout(60)
def test_a_pool_tells_its_facts_and_asking_does_not_keep_it(tmp_path):
    path = start_pool(tmp_path, idle=3.0)
    info = warm.pool_info(path, 5)
    assert info is not None
    pid = info["pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [warm.TITLE.encode(), sys.executable.encode()]
    assert info["python"] == sys.executable and info["socket"] == path and info["serving"] and info["kernels"] == []
    assert abs(info["rss_kb"] - vm_rss_kb(pid)) < 2048 and info["rss_kb"] > 10 * 1024  # ipykernel imported
    assert info["idle"] == 3.0 and 0 < info["ends_in"] <= 3.0
    # Asked every 0.2 s, it still ends 3 s after it became idle: a question is not a kernel.
    deadline = time.monotonic() + 10
    last = info["ends_in"]
    while os.path.exists(path) and time.monotonic() < deadline:
        again = warm.pool_info(path, 5)
        if again is not None:
            assert again["ends_in"] <= last + 0.05, (again["ends_in"], last)
            last = again["ends_in"]
        time.sleep(0.2)
    assert not os.path.exists(path), "the pool outlived its idle time while being asked"
    assert warm.pool_info(path, 1) is None


@pytest.mark.timeout(60)
def test_the_lister_reports_the_pools_of_its_runtime_dirs_as_one_event(tmp_path):
    path = start_pool(tmp_path, idle=30.0)
    params = AgentParams.pools(runtime_dirs=[os.path.dirname(path), str(tmp_path / "no-such-dir")])
    r = subprocess.run([sys.executable, "-c", LOADER], input=agent_stdin(params, pools_source()),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    event = json.loads(r.stdout)
    assert event["event"] == Event.POOLS
    mine = [p for p in event["pools"] if p.get("socket") == path]
    assert len(mine) == 1 and mine[0]["state"] == "serving" and mine[0]["python"] == sys.executable
    pid = mine[0]["pid"]
    # The pool's own answer, not also a second time from the process list.
    assert [p["pid"] for p in event["pools"]].count(pid) == 1
    os.kill(pid, 15)  # retired, no kernels: it ends at once


def test_the_process_list_finds_pools_no_socket_led_to(tmp_path):
    """A retired pool (its socket gone, its kernels running) or one still importing shows by its title."""
    proc = subprocess.Popen(["bash", "-c", f"exec -a {warm.TITLE} sleep 60"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = [p for p in pools.process_pools(set()) if p["pid"] == proc.pid]
            if found:
                break
            time.sleep(0.05)
        assert found and found[0]["state"] == "starting" and found[0]["python"] == "60", found
        assert found[0]["rss_kb"] > 0 and found[0]["kernels"] == []
        assert not [p for p in pools.process_pools({proc.pid}) if p["pid"] == proc.pid]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("dirs", [None, "/x", [""], ["/a", 3], ["/a\0b"]])
def test_the_lister_refuses_malformed_runtime_dirs(dirs):
    with pytest.raises(BootstrapError, match="runtime_dirs"):
        AgentParams.from_dict({"protocol": 2, "mode": "pools", "kernel_id": "status", "runtime_dirs": dirs})


def test_the_agent_refuses_the_pools_mode_and_the_lister_every_other():
    from ssh_ipykernel.session.bundle import agent_source

    for params, source in ((AgentParams.pools(runtime_dirs=[]), agent_source()),
                           (AgentParams.start(kernel_id="k", key="x"), pools_source())):
        r = subprocess.run([sys.executable, "-c", LOADER], input=agent_stdin(params, source), capture_output=True,
                           timeout=30)
        event = json.loads(r.stdout)
        assert (r.returncode, event["event"], event["code"]) == (92, "error", "bad_params"), (r, params)
