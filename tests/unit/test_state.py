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


def test_a_failed_proxy_leaves_its_error_for_whoever_started_it(tmp_path):
    from ssh_ipykernel import exceptions as exc
    from ssh_ipykernel.state import record_error, take_error

    fields = {"pid": os.getpid(), "host": "btest", "kernel_id": "k-failed", "state": "connecting", "started": 1.0}
    error = exc.AuthenticationError("btest refused authentication", host="btest", detail="u@h: Permission denied")
    record_error("k-failed", fields, error, str(tmp_path))
    # Not a running proxy, even though its pid (ours here) runs: status does not list it ...
    assert read_states(str(tmp_path)) == []
    # ... nor does the next proxy prune it at once ...
    assert prune(str(tmp_path)) == [] and os.path.exists(state_path("k-failed", str(tmp_path)))
    # ... the one who started it takes it (once) ...
    taken = take_error("k-failed", str(tmp_path))
    assert type(taken) is exc.AuthenticationError and taken.exit_code == 25 and str(taken) == str(error)
    assert not os.path.exists(state_path("k-failed", str(tmp_path)))
    assert take_error("k-failed", str(tmp_path)) is None


def test_final_records_nobody_took_are_pruned_later(tmp_path):
    import time

    from ssh_ipykernel import exceptions as exc
    from ssh_ipykernel.state import KEEP_ERRORS, record_error

    record_error("k-old", {"pid": os.getpid(), "kernel_id": "k-old"}, exc.KernelStartError("x"), str(tmp_path))
    assert prune(str(tmp_path), now=time.time() + KEEP_ERRORS / 2) == []
    assert [os.path.basename(p) for p in prune(str(tmp_path), now=time.time() + KEEP_ERRORS + 1)] == ["proxy-k-old.json"]
    record_error("k-skew", {"pid": os.getpid(), "kernel_id": "k-skew"}, exc.KernelStartError("x"), str(tmp_path))
    assert len(prune(str(tmp_path), now=time.time() - KEEP_ERRORS - 1)) == 1, "a clock set back keeps nothing for ever"


def test_take_error_leaves_a_running_proxy_alone_and_clears_a_killed_ones(tmp_path):
    from ssh_ipykernel.state import take_error

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_state("k-running", {"pid": os.getpid(), "kernel_id": "k-running"}, str(tmp_path))
    write_state("k-killed", {"pid": dead.pid, "kernel_id": "k-killed"}, str(tmp_path))
    assert take_error("k-running", str(tmp_path)) is None and os.path.exists(state_path("k-running", str(tmp_path)))
    assert take_error("k-killed", str(tmp_path)) is None and not os.path.exists(state_path("k-killed", str(tmp_path)))
    assert take_error("k-never", str(tmp_path)) is None


def test_the_session_key_never_reaches_a_final_record(tmp_path):
    from ssh_ipykernel import exceptions as exc
    from ssh_ipykernel.state import record_error, take_error

    key = "a6c1f1b2-0000-4d1e-9f00-0f9e8d7c6b5a"
    error = exc.KernelStartError("the kernel failed", detail=f"Traceback ...\nValueError: key={key}")
    path = record_error("k-key", {"pid": 1}, error, str(tmp_path), secret=key)
    with open(path) as f:
        assert key not in f.read()
    assert take_error("k-key", str(tmp_path)).detail.endswith("ValueError: key=<key>")


def test_pool_records_outlive_their_proxy_for_the_pools_idle_time(tmp_path):
    """A proxy whose kernel a warm pool forked keeps a record of it (the pool outlives the
    proxy on the host): running while the proxy runs, then ended, and pruned once the pool's
    --warm time (plus a margin) has passed; a killed proxy's record is kept a day."""
    import time

    from ssh_ipykernel.state import (KEEP_UNKNOWN_POOLS, POOL_END_MARGIN, end_pool_record, pool_ends, pool_records,
                                     record_pool)

    d = str(tmp_path)
    now = time.time()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record_pool("k1", {"host": "btest", "socket": "/r/warm-1.sock", "warm": 600.0, "pid": os.getpid(),
                       "kernel_id": "k1", "started": now, "ended": 1.0}, d)
    record_pool("k2", {"host": "btest", "socket": "/r/warm-1.sock", "warm": 600.0, "pid": dead.pid,
                       "kernel_id": "k2", "started": now}, d)
    records = {r["kernel_id"]: r for r in pool_records(d)}
    assert records["k1"]["running"] and "ended" not in records["k1"], "record_pool writes no end"
    assert not records["k2"]["running"] and pool_ends(records["k2"]) is None
    end_pool_record("k1", d, now=now)
    end_pool_record("k-none", d, now=now)  # a proxy without a record: nothing
    k1 = next(r for r in pool_records(d) if r["kernel_id"] == "k1")
    assert not k1["running"] and pool_ends(k1) == now + 600
    assert prune(d, now=now + 600 + POOL_END_MARGIN - 1) == []
    assert [os.path.basename(p) for p in prune(d, now=now + 600 + POOL_END_MARGIN + 1)] == ["pool-k1.json"]
    assert [os.path.basename(p) for p in prune(d, now=now + KEEP_UNKNOWN_POOLS + 1)] == ["pool-k2.json"]
