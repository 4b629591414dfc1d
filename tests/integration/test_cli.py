"""What the README promises of the proxy's command line beyond starting a kernel:
``ssh-ipykernel status`` against live proxies, ``--log-file`` and ``--log-level``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from kernels import (
    KERNEL_PATTERN, connection_file, cut, local_ssh_children, read_log, start_proxy, stop_proxy, wait_for,
    wait_remote_clean,
)


def cli(*args: str) -> subprocess.CompletedProcess:
    """``ssh-ipykernel ARGS`` (what the console script runs)."""
    argv = [sys.executable, "-c", "from ssh_ipykernel.cli import main; main()", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def status() -> dict:
    r = cli("status", "--json")
    assert r.returncode == 0, r.stderr
    return {k["kernel_id"]: k for k in json.loads(r.stdout)["kernels"]}


def test_status_of_live_proxies(ssh_host, tmp_path, jupyter_env):
    logs = {name: tmp_path / f"{name}.log" for name in ("alpha", "beta")}
    procs = {name: start_proxy(ssh_host, connection_file(tmp_path, name), log, "--grace", "5")
             for name, log in logs.items()}
    try:
        for log in logs.values():
            wait_for(log, "channels up")
        kernels = status()
        assert set(kernels) == {"alpha", "beta"}, kernels
        remote = set(ssh_host.remote_pids(KERNEL_PATTERN))
        for name, k in kernels.items():
            assert (k["host"], k["state"], k["reconnects"], k["pid"]) == ("btest", "up", 0, procs[name].pid), k
            assert k["remote_hostname"] == ssh_host.hostname
            assert k["remote_pid"] in remote
            assert 0 <= k["uptime"] < 120
        assert {k["remote_pid"] for k in kernels.values()} == remote
        table = cli("status").stdout
        for name, proc in procs.items():
            assert any(name in line and str(proc.pid) in line and " up " in f" {line} " for line in table.splitlines()), table

        # A proxy killed with SIGKILL could not remove its file: status leaves it out, and prunes it.
        procs["beta"].kill()
        procs["beta"].wait()
        assert set(status()) == {"alpha"}

        # Past the 6 s loss timeout the tunnel is "reconnecting", and for how long; then up again.
        with cut(ssh_host):
            wait_for(logs["alpha"], "reconnecting", timeout=30)
            time.sleep(2)
            assert status()["alpha"]["state"] == "reconnecting"
            assert any(line.startswith("btest") and "reconnecting for" in line for line in cli("status").stdout.splitlines())
        wait_for(logs["alpha"], "up: reconnected", timeout=30)
        alpha = status()["alpha"]
        assert (alpha["state"], alpha["reconnects"]) == ("up", 1), alpha
        stop_proxy(procs["alpha"], logs["alpha"])
        assert status() == {}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not wait_remote_clean(ssh_host, timeout=30)  # beta's kernel after its 5 s grace period
    assert not local_ssh_children(str(jupyter_env.runtime))


def log_lines(text: str) -> list:
    """The proxy's own log lines (what the remote side relays in between is not in the file)."""
    return [line for line in text.splitlines() if " ssh_ipykernel [" in line]


def test_log_file_and_debug_level(ssh_host, conn, tmp_path, jupyter_env):
    stderr, log_file = tmp_path / "stderr.log", tmp_path / "proxy-file.log"
    proc = start_proxy(ssh_host, conn, stderr, "--log-level", "DEBUG", "--log-file", str(log_file))
    wait_for(stderr, "channels up")
    stop_proxy(proc, stderr)
    written = log_file.read_text()
    assert log_lines(written) == log_lines(read_log(stderr)), (written, read_log(stderr))
    assert " DEBUG ssh_ipykernel " in written
    for line in ("connecting to btest", "kernel pid", "channels up"):
        assert line in written, written
    key = json.loads(conn.read_text())["key"]
    assert key not in written and key not in read_log(stderr)
    assert not wait_remote_clean(ssh_host)


def test_log_level_warning_keeps_the_errors_only(ssh_host, conn, tmp_path, jupyter_env):
    stderr, log_file = tmp_path / "stderr.log", tmp_path / "proxy-file.log"
    proc = start_proxy(ssh_host, conn, stderr, "--log-level", "WARNING", "--log-file", str(log_file))
    try:
        # Nothing is logged at WARNING while all goes well: wait for the kernel itself.
        deadline = time.monotonic() + 60
        while not ssh_host.remote_pids(KERNEL_PATTERN):
            assert time.monotonic() < deadline and proc.poll() is None, read_log(stderr)
            time.sleep(0.1)
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, read_log(stderr)
    assert not [line for line in log_lines(read_log(stderr)) if " INFO " in line or " DEBUG " in line], read_log(stderr)
    assert not wait_remote_clean(ssh_host)
    bad = start_proxy(ssh_host, conn, stderr, "--log-level", "WARNING", "--log-file", str(log_file),
                      python="/opt/no/such/env")
    assert bad.wait(60) == 31
    errors = [line for line in log_lines(log_file.read_text()) if " ERROR " in line]
    assert errors and "remote python /opt/no/such/env not found on btest" in errors[-1], log_file.read_text()
    assert not [line for line in log_lines(log_file.read_text()) if " INFO " in line]
    assert os.stat(log_file).st_size > 0
