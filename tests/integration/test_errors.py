"""Every failure a user can meet gives a clear message, a distinct exit code, and leaves nothing."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernels import Kernel, free_ports, manage, transport_args

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


def proxy(host, connection_file: Path, *args: str, timeout: float = 60, offline: bool = False) -> subprocess.CompletedProcess:
    """Run the proxy by hand; ``offline`` runs it in an empty network namespace (no DNS traffic)."""
    argv = [sys.executable, "-m", "ssh_ipykernel", "--ssh-config", str(host.ssh_config), *transport_args(),
            *args, "--timeout", "10", "-f", str(connection_file)]
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
