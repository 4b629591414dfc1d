"""--transport: which backend a proxy gets, and errors before anything connects."""
from __future__ import annotations

import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel import transport
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.transport import TransportOptions, create_transport, resolve_kind


@pytest.mark.parametrize("which, expected", [("/usr/bin/ssh", "openssh"), (None, "paramiko")])
def test_auto_is_openssh_when_ssh_is_on_path(monkeypatch, which, expected):
    monkeypatch.setattr(transport.shutil, "which", lambda name: which if name == "ssh" else None)
    assert resolve_kind("auto") == expected
    assert resolve_kind("openssh") == "openssh" and resolve_kind("paramiko") == "paramiko"


def test_paramiko_backend_is_built_without_connecting(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config
    config = tmp_path / "config"
    config.write_text("Host btest\n  HostName 10.0.0.9\n  User sik\n")
    t = create_transport("paramiko", parse_host("btest"), TransportOptions(ssh_config=str(config)))
    try:
        assert type(t).__name__ == "ParamikoTransport"
        assert (t.settings.hostname, t.settings.user, t.reused) == ("10.0.0.9", "sik", False)
        assert t.probe_address() == ("10.0.0.9", 22)
        assert not t.alive()
    finally:
        t.close()
        t.close()  # safe twice


def test_an_unsupported_config_option_fails_before_connecting(tmp_path):
    config = tmp_path / "config"
    config.write_text("Host btest\n  PKCS11Provider /usr/lib/opensc-pkcs11.so\n")
    with pytest.raises(exc.UsageError, match="--transport openssh"):
        create_transport("paramiko", parse_host("btest"), TransportOptions(ssh_config=str(config)))


def test_unknown_kind():
    with pytest.raises(exc.UsageError, match="openssh, paramiko, auto"):
        create_transport("putty", parse_host("btest"), TransportOptions())


def test_the_proxy_exits_2_naming_the_option(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "config"
    config.write_text("Host btest\n  PKCS11Provider /usr/lib/opensc-pkcs11.so\n")
    conn = tmp_path / "kernel-1.json"
    conn.write_text('{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5, '
                    '"ip": "127.0.0.1", "key": "k", "transport": "tcp", "signature_scheme": "hmac-sha256", '
                    '"kernel_name": ""}')
    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel", "--host", "btest", "--ssh-config", str(config),
                        "--transport", "paramiko", "-f", str(conn)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "PKCS11Provider" in r.stderr and "--transport openssh" in r.stderr and "Traceback" not in r.stderr
