"""Tests of the SSH test-host infrastructure itself (tests/nshosts.py, docker/).

If these fail, every other integration test is meaningless: they check that
the alias really reaches a *different* host, that the remote env exists only
there, and that the failure aliases and the link/sshd controls do what the
product tests will rely on.
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time

import pytest

from kernels import CUT_KINDS, cut
from nshosts import SSHTestHost

QUICK = ["-o", "ConnectTimeout=2"]


def _ok(host: SSHTestHost, cmd: str, **kw: object) -> str:
    res = host.run(cmd, **kw)  # type: ignore[arg-type]
    assert res.returncode == 0, f"{cmd!r} on {host.alias}: rc={res.returncode} stderr={res.stderr!r}"
    return res.stdout.strip()


def test_alias_reaches_remote_host(ssh_host: SSHTestHost) -> None:
    remote = _ok(ssh_host, "hostname")
    assert remote == ssh_host.hostname
    assert remote != socket.gethostname()
    assert _ok(ssh_host, "id -un") == ssh_host.user
    assert _ok(ssh_host, "echo $HOME") == ssh_host.home


def test_remote_env_exists_only_remotely(ssh_host: SSHTestHost) -> None:
    _ok(ssh_host, f"test -x {shlex.quote(ssh_host.env_python)}")
    assert not os.path.exists(ssh_host.env_prefix), "the remote env must not be visible locally"
    prefix = _ok(ssh_host, f"{shlex.quote(ssh_host.env_python)} -c 'import sys, ipykernel; print(sys.prefix)'")
    assert prefix == ssh_host.env_prefix


def test_python3_on_remote_path_is_env_python(ssh_host: SSHTestHost) -> None:
    assert _ok(ssh_host, "command -v python3") == f"{ssh_host.env_prefix}/bin/python3"
    assert _ok(ssh_host, "python3 -c 'import sys, ipykernel; print(sys.prefix)'") == ssh_host.env_prefix


def test_system_python_lacks_ipykernel(ssh_host: SSHTestHost) -> None:
    res = ssh_host.run(f"{shlex.quote(ssh_host.python_without_ipykernel)} -c 'import ipykernel'")
    assert res.returncode == 1
    assert "ModuleNotFoundError" in res.stderr


def test_runtime_dir_is_writable(ssh_host: SSHTestHost) -> None:
    d = shlex.quote(ssh_host.runtime_dir)
    _ok(ssh_host, f"mkdir -p {d} && f=$(mktemp -p {d}) && test -w \"$f\" && rm \"$f\"")


@pytest.mark.parametrize("kind, message", [
    ("badkey", "Permission denied"),
    ("changedkey", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
    ("unknownkey", "Host key verification failed"),
    ("refused", "Connection refused"),
])
def test_failure_aliases(ssh_host: SSHTestHost, kind: str, message: str) -> None:
    res = ssh_host.run("true", alias=ssh_host.aliases[kind], options=QUICK, timeout=20)
    assert res.returncode == 255
    assert message in res.stderr


@pytest.mark.parametrize("kind", CUT_KINDS)
def test_both_kinds_of_cut_and_their_restore(ssh_host: SSHTestHost, kind: str) -> None:
    """A blackhole cut lets a connect time out (~2 s); a down link fails it at once."""
    with cut(ssh_host, kind):
        started = time.monotonic()
        res = ssh_host.run("true", options=QUICK, timeout=20)
        elapsed = time.monotonic() - started
    assert res.returncode == 255
    if kind == "blackhole":
        assert "timed out" in res.stderr
        assert 1.5 < elapsed < 10, f"expected a ~2 s timeout, took {elapsed:.1f} s"
    else:
        assert "No route to host" in res.stderr, res.stderr
        assert elapsed < 1.5, f"expected an immediate failure, took {elapsed:.1f} s"
    _ok(ssh_host, "true", options=QUICK)


def test_a_failing_block_still_restores_the_link(ssh_host: SSHTestHost) -> None:
    with pytest.raises(ZeroDivisionError), cut(ssh_host, "down"):
        raise ZeroDivisionError("a failing block")
    _ok(ssh_host, "true", options=QUICK)


def test_restart_sshd_keeps_sessions(ssh_host: SSHTestHost) -> None:
    marker = f"sleep 3{os.getpid() % 1000:03d}"  # unique command line to find it remotely
    session = subprocess.Popen(ssh_host.ssh_argv(marker, options=["-o", "BatchMode=yes"]),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not ssh_host.remote_pids(f"^{marker}$"):
            assert time.monotonic() < deadline, "remote sleep never showed up in remote_pids()"
            time.sleep(0.1)
        [pid] = ssh_host.remote_pids(f"^{marker}$")
        ssh_host.restart_sshd()
        assert ssh_host.remote_pids(f"^{marker}$") == [pid], "established session died with the listener"
        assert session.poll() is None
        assert _ok(ssh_host, "hostname") == ssh_host.hostname
        _ok(ssh_host, f"kill {pid}")
        # The remote command was killed by a signal: ssh passes on no status for that, it exits 255.
        assert session.wait(15) == 255
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert ssh_host.sshd_log().count("Server listening on") >= 2


def test_jump_host_only_through_bastion(host_factory, ssh_host: SSHTestHost) -> None:
    """A second host hanging off btest's namespace, reachable only via ProxyJump."""
    with host_factory.create_host("jtest", reachable_from=ssh_host) as jump:
        assert _ok(jump, "hostname") == jump.hostname != ssh_host.hostname
        _ok(jump, f"test -x {shlex.quote(jump.env_python)}")
        with pytest.raises(OSError), socket.create_connection((jump.address, 22), timeout=2):
            pass  # not routable from here (the blackhole safety route refuses at once)
    assert "jtest" not in host_factory.ssh_config.read_text()


def test_remote_tmp_is_private(ssh_host: SSHTestHost) -> None:
    name = _ok(ssh_host, "mktemp /tmp/sik-probe-XXXXXX")
    try:
        assert not os.path.exists(name), "remote /tmp must not be the local /tmp"
    finally:
        ssh_host.run(f"rm -f {shlex.quote(name)}")
