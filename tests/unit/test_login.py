"""transport/login.py and the login command line: what `ssh-ipykernel login` runs, its record,
the wait for it, its errors (no sshd: tests/integration/test_login.py types into the real one)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.options import (DEFAULT_LOGIN_WAIT, ConnectionOptions, ProxyOptions, parse_login_persist,
                                   parse_login_wait)
from ssh_ipykernel.status import login_rows
from ssh_ipykernel.transport import TransportOptions, create_transport
from ssh_ipykernel.transport import login as logins


@pytest.fixture
def runtime(monkeypatch):
    path = tempfile.mkdtemp(prefix="sik", dir="/tmp")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", path)
    return path


def transport(spec="alice@hpc:2222", **opts):
    return create_transport("openssh", parse_host(spec), TransportOptions(**opts), name="login")


def test_the_login_master_asks_a_person_but_never_accepts_host_keys(runtime):
    t = transport(ssh_config="/cfg", connect_timeout=9)
    argv = t.login_argv(8 * 3600, ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=8"])
    assert argv[-2:] == ["--", "hpc"]
    for opt in ("ControlMaster=yes", "ControlPersist=28800", "BatchMode=no", "StrictHostKeyChecking=yes",
                "PermitLocalCommand=no", "ConnectTimeout=9", f"ControlPath={t.control_path}", "ServerAliveCountMax=8"):
        assert opt in argv
    assert not any("LocalCommand=" in a and "Permit" not in a for a in argv)
    assert "-M" in argv and "-N" in argv
    # The same control socket a kernel of the host joins.
    assert t.control_path == transport(ssh_config="/cfg").control_path


def test_never_means_until_logout(runtime):
    assert "ControlPersist=yes" in transport().login_argv(None)


def test_login_persist_and_wait_parse_with_clear_errors():
    assert parse_login_persist("8h") == 28800 and parse_login_persist("never") is None
    assert parse_login_persist("90") == 90
    for bad in ("0", "soon", "-1", ""):
        with pytest.raises(exc.UsageError, match="--persist"):
            parse_login_persist(bad)
    assert parse_login_wait("10m") == 600 and parse_login_wait("0") == 0
    with pytest.raises(exc.UsageError, match="--login-wait 'never'"):
        parse_login_wait("never")


def test_login_wait_is_recorded_in_the_kernelspec_only_when_not_the_default():
    default = ProxyOptions.from_params({"host": "hpc"})
    assert default.connection.login_wait == DEFAULT_LOGIN_WAIT and "--login-wait" not in default.argv()
    five = ProxyOptions.from_params({"host": "hpc", "login_wait": "5m"})
    argv = five.argv()
    assert argv[argv.index("--login-wait") + 1] == "5m"
    from ssh_ipykernel.proxycli import parse_proxy_argv

    assert ProxyOptions.from_params(parse_proxy_argv(argv)).connection == five.connection


def test_the_record_is_private_and_read_back(tmp_path):
    control = str(tmp_path / "cm-0123")
    record = logins.LoginRecord(host="hpc", ssh_config=None, started=1.5, persist=None, pid=4242)
    logins.write_record(control, record)
    assert os.stat(control + ".login").st_mode & 0o777 == 0o600
    assert logins.read_record(control) == record
    assert logins.is_login_master(control, 4242) and not logins.is_login_master(control, 4243)
    (tmp_path / "cm-0123.login").write_text("{not json")
    assert logins.read_record(control) is None
    logins.remove_record(control)
    logins.remove_record(control)  # twice is fine
    assert not logins.is_login_master(control, 4242)


def test_records_of_logins_that_ended_are_pruned(tmp_path):
    control = str(tmp_path / "cm-0123")
    logins.write_record(control, logins.LoginRecord("hpc", None, time.time(), 3600.0, 99999999))
    assert logins.logged_in(str(tmp_path)) == []  # no master answers there
    assert not os.path.exists(control + ".login")


def test_the_status_rows_say_since_when_and_for_how_long():
    now = time.time()
    rows = login_rows([logins.LoginRecord("hpc", None, now - 7200, 36000.0, 11),
                       logins.LoginRecord("hpc2", "/cfg", now - 60, None, 12)], now=now)
    assert rows[0][0] == "hpc" and "(2 h 00 min ago)" in rows[0][1] and rows[0][2:] == ["11", "10h after its last kernel"]
    assert rows[1][0] == "hpc2 (-F /cfg)" and rows[1][3] == "until logout"


def test_waiting_for_a_login_ends_at_its_deadline_or_on_a_signal(tmp_path):
    control = str(tmp_path / "cm-none")
    started = time.monotonic()
    assert logins.wait_for_master(control, time.monotonic() + 0.3) is None
    assert 0.25 < time.monotonic() - started < 2
    r, w = socket.socketpair()
    try:
        w.send(b"\x0f")
        started = time.monotonic()
        assert logins.wait_for_master(control, time.monotonic() + 30, wake_fd=r.fileno()) is None
        assert time.monotonic() - started < 1
    finally:
        r.close()
        w.close()


def test_a_refused_login_says_the_answers_were_wrong():
    error = logins.login_failure("sik2fa@10.0.0.2: Permission denied (keyboard-interactive).\n", host="hpc",
                                 spec="hpc", ssh_config="/cfg", timeout=30)
    assert type(error) is exc.AuthenticationError and error.exit_code == 25
    assert "did not accept the login" in error.message and "ssh-ipykernel login --ssh-config /cfg hpc" in error.message
    key = logins.login_failure("No ED25519 host key is known for [10.0.0.2]:22 and you have requested strict "
                               "checking.\nHost key verification failed.\n", host="hpc", spec="hpc",
                               ssh_config=None, timeout=30)
    assert isinstance(key, exc.HostKeyError) and key.exit_code == 24


def test_login_needs_a_terminal():
    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel", "login", "hpc"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL, start_new_session=True)  # no controlling terminal
    assert r.returncode == 2
    assert "needs a terminal" in r.stderr and "File > New > Terminal" in r.stderr


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "h;id", "$(id)"])
def test_hostile_hosts_are_refused_before_ssh_runs(host):
    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel", "login", "--", host], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL, start_new_session=True)
    assert r.returncode == 2 and "is not a host name" in r.stderr, r.stderr


def test_logout_of_a_host_not_logged_in(runtime):
    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel", "logout", "hpc"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "Not logged in to hpc" in r.stdout


def test_the_proxy_still_takes_its_own_command_line():
    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel", "--help"], capture_output=True, text=True, timeout=60)
    assert "--login-wait" in r.stdout and "Start a kernel on HOST" in r.stdout


def test_connection_options_default():
    assert ConnectionOptions(host=parse_host("hpc")).login_wait == DEFAULT_LOGIN_WAIT
