"""Every failure a user can meet gives a clear message, a distinct exit code, and leaves nothing."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernels import AGENT_PATTERN, KERNEL_PATTERN, Kernel, free_ports, manage, transport_args

pytestmark = pytest.mark.both_transports


@pytest.fixture
def connection_file(tmp_path: Path) -> Path:
    """A connection file as Jupyter writes it, on free local ports."""
    ports = free_ports(5)
    info = dict(zip(("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"), ports),
                ip="127.0.0.1", key="a6c1f1b2-error-test-key-0f9e8d7c", transport="tcp",
                signature_scheme="hmac-sha256", kernel_name="ssh_btest")
    path = tmp_path / "kernel-0000-error-test.json"
    path.write_text(json.dumps(info))
    return path


def proxy(host, connection_file: Path, *args: str, timeout: float = 60, offline: bool = False,
          start_timeout: str = "10") -> subprocess.CompletedProcess:
    """Run the proxy by hand; ``offline`` runs it in an empty network namespace (no DNS traffic)."""
    argv = [sys.executable, "-m", "ssh_ipykernel", "--ssh-config", str(host.ssh_config), *transport_args(),
            *args, "--timeout", start_timeout, "-f", str(connection_file)]
    if offline:
        argv = ["unshare", "--net", "--"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def check(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.stderr


def test_name_does_not_resolve(ssh_host, connection_file, nothing_left):
    # In a network namespace of its own the lookup fails without a query leaving the machine.
    r = proxy(ssh_host, connection_file, "--host", "nosuchhost.invalid", offline=True)
    check(r, 21, "cannot resolve the host name of 'nosuchhost.invalid'", "ssh config")


def test_authentication_refused(ssh_host, connection_file, nothing_left, transport):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.aliases["badkey"])
    said = "Permission denied" if transport == "openssh" else "1 key(s) tried"
    check(r, 25, "refused authentication", "authorized_keys", said)


def test_changed_host_key_is_never_bypassed(ssh_host, connection_file, nothing_left):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.aliases["changedkey"])
    check(r, 24, "has CHANGED", "ssh-keygen", "never bypasses")


def test_unknown_host_key_says_how_to_accept_it(ssh_host, connection_file, nothing_left, transport):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.aliases["unknownkey"])
    if transport == "openssh":
        check(r, 24, "not in known_hosts", f"ssh -F {ssh_host.ssh_config} {ssh_host.aliases['unknownkey']}")
    else:  # there may be no ssh client to accept it with: the fingerprint, and where to add it
        check(r, 24, "not in known_hosts", "ssh-ed25519 key SHA256:", "ssh-keyscan -p 22")


def test_connection_refused(ssh_host, connection_file, nothing_left):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.aliases["refused"])
    check(r, 22, "refused the connection", "sshd")


def test_remote_python_not_found(ssh_host, connection_file, nothing_left):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", "/opt/no/such/env")
    check(r, 31, "remote python /opt/no/such/env not found on btest", "--python")


def test_ipykernel_missing(ssh_host, connection_file, nothing_left):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", ssh_host.python_without_ipykernel)
    check(r, 33, f"ipykernel is not installed for the remote python {ssh_host.python_without_ipykernel}",
          "pip install ipykernel")


def test_hostile_python_path_runs_nothing(ssh_host, connection_file, nothing_left):
    marker = "/tmp/sik-python-marker"
    for python in (f"{ssh_host.env_prefix}; touch {marker}", f"$(touch {marker})", f"`touch {marker}`",
                   f"'; touch {marker}; '"):
        r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", python)
        check(r, 31, "not found")
    assert ssh_host.run(f"test -e {marker}").returncode != 0


def test_local_port_in_use(ssh_host, connection_file, nothing_left):
    info = json.loads(connection_file.read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", info["iopub_port"]))
        s.listen()
        r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", ssh_host.env_prefix)
    check(r, 40, f"local port {info['iopub_port']} is already in use")


def test_malformed_connection_file(ssh_host, tmp_path, nothing_left):
    bad = tmp_path / "kernel-bad.json"
    bad.write_text('{"shell_port": "x"}')
    r = proxy(ssh_host, bad, "--host", ssh_host.alias)
    check(r, 2, "shell_port is 'x'")
    r = proxy(ssh_host, tmp_path / "missing.json", "--host", ssh_host.alias)
    check(r, 2, "does not exist")


def test_error_reaches_the_jupyter_log(ssh_host, tmp_path, nothing_left):
    """Through KernelManager: the kernel dies at start, and its log says why."""
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", "/opt/no/such/env")
    k = Kernel(prefix, "ssh_btest", tmp_path / "proxy.log")
    with pytest.raises(AssertionError, match="Kernel died"):
        k.start(timeout=30)
    deadline = time.monotonic() + 10
    while k.km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "remote python /opt/no/such/env not found on btest" in k.log()
    assert k.proxy.returncode == 31
    k.km.cleanup_resources()


def test_remote_connection_file_not_writable(ssh_host, connection_file, nothing_left):
    ssh_host.run(f"mkdir -p {ssh_host.runtime_dir} && chmod 500 {ssh_host.runtime_dir}")
    try:
        r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", ssh_host.env_prefix)
    finally:
        ssh_host.run(f"chmod 700 {ssh_host.runtime_dir}")
    check(r, 34, "could not write the kernel's connection file on btest", "Permission denied",
          "JUPYTER_RUNTIME_DIR")


def test_pre_command_that_fails(ssh_host, connection_file, nothing_left):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--pre-command", "module load python/3.11", timeout=40)
    check(r, 37, "the --pre-command failed on btest", "ssh btest 'module load python/3.11'", "module")


def test_workdir_that_does_not_exist_runs_nothing(ssh_host, connection_file, nothing_left):
    marker = "/tmp/sik-workdir-marker"
    r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--workdir", f"~/$(touch {marker})", timeout=40)
    check(r, 39, f"the working directory {ssh_host.home}/$(touch {marker}) does not exist", "mkdir -p")
    assert ssh_host.run(f"test -e {marker}").returncode != 0


def test_remote_kernelspec_not_found(ssh_host, connection_file, nothing_left):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--remote-kernel", "julia-1.10", timeout=40)
    check(r, 38, "no kernelspec 'julia-1.10'", "installed there: python3", "jupyter kernelspec list")


def test_kernel_command_without_the_connection_file(ssh_host, connection_file, nothing_left):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--kernel-cmd", "python3 -m ipykernel_launcher")
    check(r, 2, "does not say where the connection file goes", "{connection_file}")


# ------------------------------------------------------------------ remote conditions made for the test
#: A python that reports 3.7: the real one, with a sitecustomize that rewrites sys.version_info
#: (what the one-line loader checks) before anything else runs.
OLD_PYTHON = "~/oldpy"


@pytest.fixture
def old_python(ssh_host):
    script = ("set -e; mkdir -p ~/oldpy/bin ~/oldpy/site; "
              "echo 'import sys; sys.version_info = (3, 7, 17, \"final\", 0)' > ~/oldpy/site/sitecustomize.py; "
              "printf '#!/bin/sh\\nPYTHONPATH=$HOME/oldpy/site exec /usr/bin/python3 \"$@\"\\n' > ~/oldpy/bin/python; "
              "chmod +x ~/oldpy/bin/python")
    r = ssh_host.run(script)
    assert r.returncode == 0, r.stderr
    assert ssh_host.run("~/oldpy/bin/python -c 'import sys; assert sys.version_info < (3, 8)'").returncode == 0
    yield OLD_PYTHON
    ssh_host.run("rm -rf ~/oldpy")


def test_remote_python_too_old(ssh_host, connection_file, old_python, nothing_left):
    r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", old_python)
    check(r, 32, f"remote python {old_python} on btest is older than 3.8", "point --python at a newer")


def test_no_report_within_the_timeout(ssh_host, connection_file, nothing_left):
    """README exit 35, "did not report in time": here the remote login shell hangs (a
    --pre-command that takes 25 s and then fails, as a hung `module load` can); the proxy gives
    up after its --timeout instead of waiting for it."""
    t0 = time.monotonic()
    r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", ssh_host.env_prefix,
              "--pre-command", "sleep 25; false", start_timeout="4")
    check(r, 35, "did not report ready within 4 s", "raise --timeout")
    # 4 s, then up to 10 s for the stop of the half-started session (proxy.SHUTDOWN_TIMEOUT).
    assert time.monotonic() - t0 < 20, "the proxy waited for the pre-command"


def kill_remote_kernels(host) -> None:
    """End agents and kernels left on ``host`` (found in its namespace only: never another run's)."""
    import signal

    for pid in host.remote_pids(AGENT_PATTERN + "|" + KERNEL_PATTERN):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    host.run(f"rm -f {host.runtime_dir}/kernel-ssh-*")


def test_a_start_that_timed_out_starts_nothing_later(ssh_host, connection_file):
    """A start that times out while a slow --pre-command runs: the proxy gives up (35), the
    remote shell goes on sleeping, then runs python. Nobody will ever attach to what it would
    start, so it must start nothing (it once started a kernel and kept it for the grace period)."""
    # Only what this start could make: another test's kernel may be kept for its grace period.
    before = set(ssh_host.remote_pids(AGENT_PATTERN + "|" + KERNEL_PATTERN))
    t0 = time.monotonic()
    try:
        r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", ssh_host.env_prefix,
                  "--pre-command", "sleep 20", start_timeout="4")
        check(r, 35, "did not report ready within 4 s")
        # While it sleeps, the remote shell's own command line names the agent's loader: look
        # once the pre-command is over and python has had its chance to start something.
        time.sleep(max(0.0, t0 + 23 - time.monotonic()))
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            started = set(ssh_host.remote_pids(AGENT_PATTERN + "|" + KERNEL_PATTERN)) - before
            assert not started, f"a kernel started after the timeout: {started}"
            time.sleep(0.25)
        left = ssh_host.run(f"ls {ssh_host.runtime_dir} 2>/dev/null | grep '^kernel-ssh-' || true").stdout.split()
        assert left == [], left
    finally:
        kill_remote_kernels(ssh_host)


@pytest.fixture
def sudo_wants_a_password(host_factory):
    """A host of its own on which sikuser's sudo asks for a password. sudoers is shared by every
    namespace of this machine (other test runs use --sudo at the same time), so the rule names
    only this host's own hostname, is checked with visudo first, and is removed afterwards."""
    hostname = f"sik-sudo-{os.getpid():x}"
    rule = Path(f"/etc/sudoers.d/sik-zz-password-{os.getpid():x}")  # read after sik-<user> (NOPASSWD)
    with host_factory.create_host("sudotest", hostname=hostname) as host:
        draft = host.dir / "sudoers"
        draft.write_text(f"{host.user} {hostname} = (ALL) PASSWD: ALL\n")
        subprocess.run(["visudo", "-cqf", str(draft)], check=True, capture_output=True, timeout=30)
        draft.chmod(0o440)
        shutil.copy2(draft, rule)
        try:
            yield host
        finally:
            rule.unlink()


def test_sudo_that_wants_a_password(ssh_host, sudo_wants_a_password, connection_file, nothing_left):
    host = sudo_wants_a_password
    assert "password is required" in host.run("sudo -n true").stderr
    assert ssh_host.run("sudo -n true").returncode == 0, "the rule reached another host"
    r = proxy(host, connection_file, "--host", host.alias, "--python", host.env_prefix, "--sudo")
    check(r, 36, "sudo on sudotest wants a password", "NOPASSWD", "drop --sudo")
    assert not host.remote_pids(AGENT_PATTERN + "|" + KERNEL_PATTERN)


def test_workdir_that_cannot_be_entered(ssh_host, connection_file, nothing_left):
    """A directory of the (non-root) remote user's that it may not enter: exit 39, nothing runs."""
    assert ssh_host.run("mkdir -p ~/locked && chmod 000 ~/locked && ! cd ~/locked").returncode == 0
    try:
        r = proxy(ssh_host, connection_file, "--host", ssh_host.alias, "--python", ssh_host.env_prefix,
                  "--workdir", "~/locked")
    finally:
        ssh_host.run("chmod 700 ~/locked && rmdir ~/locked")
    check(r, 39, f"the working directory {ssh_host.home}/locked cannot be entered (permission denied)")
    assert not ssh_host.remote_pids(KERNEL_PATTERN)
