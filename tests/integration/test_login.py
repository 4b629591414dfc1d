"""Hosts that need a person to log in: `ssh-ipykernel login`, typed into as a person would.

The 2FA host (``otest``) is an sshd with PAM: keyboard-interactive only, the account's password
(pam_unix) then a one-time code (pam_google_authenticator), as at HPC centres. The login is
driven with pexpect on a pty running the real command line; the codes come from oathtool. The
kernels are real KernelManagers on a kernelspec written by ``manage``. Timings are printed
(run with -s).
"""
from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import signal
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pexpect
import pytest

from kernels import Kernel, first_answer_after, kernel_factory, manage, ssh_masters, wait_for, wait_remote_clean
from nshosts import TwoFactor

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).parent / "ssh-ipykernel")


@pytest.fixture(scope="session")
def two_factor() -> TwoFactor:
    return TwoFactor()


@pytest.fixture(scope="session")
def otp_host(host_factory, two_factor):
    """``otest``: password + one-time code over keyboard-interactive (user sik2fa)."""
    host = host_factory.create_host("otest", two_factor=two_factor)
    yield host
    host.close()


def answers(kernel: Kernel, timeout: float = 30) -> None:
    """Until the kernel answers kernel_info (as test_reconnect waits: a request that crossed the
    reconnect may get its reply without its iopub messages), then drop the replies, so that the
    next request starts clean."""
    first_answer_after(kernel, time.monotonic(), timeout)
    while True:
        try:
            kernel.kc.get_shell_msg(timeout=0.5)
        except queue.Empty:
            return


def shell_value(kernel: Kernel, expression: str) -> str:
    """``expression``'s repr from the execute reply (user_expressions: the shell channel only; an
    iopub subscription still coming back after a reconnect cannot lose it)."""
    msg_id = kernel.kc.execute("", silent=True, user_expressions={"v": expression})
    reply = kernel.wait_reply(msg_id, 30)
    return reply["user_expressions"]["v"]["data"]["text/plain"]


def accepted_2fa_logins(host) -> int:
    return host.sshd_log().count("Accepted keyboard-interactive/pam")


def login(host, answers: List[Tuple[str, str]], *, alias: Optional[str] = None, args: Tuple[str, ...] = (),
          argv0: Tuple[str, ...] = (SCRIPT,), timeout: float = 60) -> Tuple[int, str, float]:
    """Run `ssh-ipykernel login` on a pty and answer each prompt (regex, answer) in turn, as a
    person types; (exit status, everything the terminal showed, seconds)."""
    started = time.monotonic()
    child = pexpect.spawn(argv0[0], [*argv0[1:], "login", "--ssh-config", str(host.ssh_config), *args,
                                     alias or host.alias], encoding="utf-8", timeout=timeout)
    shown = []
    try:
        for prompt, answer in answers:
            child.expect(prompt)
            shown.append(child.before + child.after)
            child.sendline(answer)
        child.expect(pexpect.EOF)
        shown.append(child.before)
    finally:
        child.close()
    return child.exitstatus, "".join(shown), time.monotonic() - started


def person(two_factor: TwoFactor, code: Optional[str] = None) -> List[Tuple[str, str]]:
    return [(r"\(sik2fa@[\d.]+\) Password: ", two_factor.password),
            (r"\(sik2fa@[\d.]+\) Verification code: ", code or two_factor.code())]


@pytest.fixture
def kernels(otp_host, tmp_path):
    """Kernels of a kernelspec for ``otest``, made by ``kernels()``; all shut down at the end,
    nothing left on the remote."""
    with kernel_factory(otp_host, tmp_path, "otp") as make:
        yield make


def test_login_then_kernels_start_without_a_prompt(otp_host, two_factor, kernels, jupyter_env, capsys):
    before = accepted_2fa_logins(otp_host)
    code, shown, seconds = login(otp_host, person(two_factor))
    assert code == 0, shown
    assert "Logged in to otest" in shown and two_factor.password not in shown
    k1, k2 = kernels(), kernels()
    for k in (k1, k2):
        k.start(timeout=60)
        assert k.value("__import__('getpass').getuser()") == "sik2fa"
        assert "(shared connection)" in k.log()
    assert accepted_2fa_logins(otp_host) == before + 1  # one login for everything
    status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"Logged in .*\n.*\notest .* ago\)", status), status
    with capsys.disabled():
        print(f"\nlogin (typed by pexpect) took {seconds:.2f} s; two kernels started with no prompt")


def test_a_kernel_started_before_the_login_waits_and_starts_after_it(otp_host, two_factor, kernels, capsys):
    k = kernels()
    k.launch()
    wait_for(k.log_path, "needs a person to log in", timeout=30)
    assert "ssh-ipykernel login --ssh-config" in k.log() and "waits up to 10 min" in k.log()
    assert k.proxy.poll() is None
    code, shown, _ = login(otp_host, person(two_factor), argv0=(sys.executable, "-m", "ssh_ipykernel"))
    assert code == 0, shown
    logged_in = time.monotonic()
    k.wait_ready(60)
    ready = time.monotonic() - logged_in
    assert k.value("6 * 7") == "42"
    noticed = float(re.search(r"noticed (\d+\.\d+) s after the login", k.log()).group(1))
    assert noticed < 1.0, k.log()
    with capsys.disabled():
        print(f"\nwaiting kernel noticed the login {noticed:.3f} s after it; kernel_info answered "
              f"{ready:.2f} s after the login command returned")


def test_a_wrong_code_is_a_clear_error_and_no_hang(otp_host, two_factor, jupyter_env):
    wrong = two_factor.wrong_code()
    # ssh asks three times (NumberOfPasswordPrompts), as it would for a mistyped code.
    code, shown, seconds = login(otp_host, person(two_factor, wrong) * 3, timeout=60)
    assert code == 25, shown
    assert "did not accept the login" in shown and "ssh-ipykernel login" in shown
    assert seconds < 45
    assert not ssh_masters(str(jupyter_env.runtime))


def as_from_a_shell() -> None:
    """In the child, before exec: SIGINT handled by default and no signal blocked, as in a
    process a terminal's shell starts. A test process may have SIGINT ignored or blocked (a
    test runner's worker), and that survives exec: ssh and ssh-ipykernel would never see the
    Ctrl-C (ssh's password prompt then took it as an empty password, in two CI runs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def test_ctrl_c_at_a_prompt_cancels_the_login(otp_host, jupyter_env):
    child = pexpect.spawn(SCRIPT, ["login", "--ssh-config", str(otp_host.ssh_config), otp_host.alias],
                          encoding="utf-8", timeout=30, preexec_fn=as_from_a_shell)
    child.expect("Password: ")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130 and "cancelled" in child.before, child.before
    assert "Traceback" not in child.before
    assert not ssh_masters(str(jupyter_env.runtime))


def test_an_unknown_host_key_is_never_accepted(otp_host, two_factor, jupyter_env):
    code, shown, _ = login(otp_host, [], alias=f"{otp_host.alias}-unknownkey")
    assert code == 24, shown
    assert "not in known_hosts yet" in shown and "does not accept unknown host keys" in shown
    assert not ssh_masters(str(jupyter_env.runtime))


def test_a_kernel_gives_up_after_login_wait(otp_host, tmp_path):
    prefix = tmp_path / "prefix"
    manage(otp_host, prefix, "--host", otp_host.alias, "--python", otp_host.env_prefix, "--name", "otpw",
           "--login-wait", "3")
    k = Kernel(prefix, "otpw", tmp_path / "proxy.log")
    k.launch()
    assert k.proxy.wait(30) == 25
    log = k.log()
    assert "waits up to 3 s" in log and "nobody logged in within 3 s" in log, log
    k.shutdown()


def test_a_waiting_kernel_is_shut_down_at_once(otp_host, kernels):
    """Jupyter gives up on a kernel that waits (the notebook closed): SIGTERM ends the wait."""
    import signal

    k = kernels()
    k.launch()
    wait_for(k.log_path, "needs a person to log in", timeout=30)
    started = time.monotonic()
    k.proxy.send_signal(signal.SIGTERM)
    assert k.proxy.wait(10) == 0
    assert time.monotonic() - started < 5, k.log()
    assert "Traceback" not in k.log()


def test_check_reports_an_interactive_login(otp_host, tmp_path):
    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel.manage", "check", "--ssh-config", str(otp_host.ssh_config),
                        "--host", otp_host.alias, "--python", otp_host.env_prefix],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 27, r.stdout + r.stderr
    assert "needs an interactive login" in r.stdout and "ssh-ipykernel login" in r.stdout, r.stdout


def test_check_passes_through_a_login(otp_host, two_factor):
    assert login(otp_host, person(two_factor))[0] == 0
    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel.manage", "check", "--ssh-config", str(otp_host.ssh_config),
                        "--host", otp_host.alias, "--python", otp_host.env_prefix],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "through the connection opened by `ssh-ipykernel login`" in r.stdout and "All 10 checks passed" in r.stdout


def test_a_20_s_cut_needs_no_new_code(otp_host, two_factor, kernels, capsys):
    assert login(otp_host, person(two_factor))[0] == 0
    logins = accepted_2fa_logins(otp_host)
    k = kernels()
    k.start(timeout=60)
    assert k.execute("x = 7")[0]["status"] == "ok"
    pid = k.value("__import__('os').getpid()")
    otp_host.link_down()
    try:
        wait_for(k.log_path, "reconnecting:", timeout=30)
        time.sleep(20)
    finally:
        otp_host.link_up()
    back = time.monotonic()
    wait_for(k.log_path, "reconnected after", timeout=60)
    answered = time.monotonic() - back
    answers(k)
    assert shell_value(k, "__import__('os').getpid()") == pid and shell_value(k, "x") == "7"
    assert accepted_2fa_logins(otp_host) == logins, "a new login was made"
    assert "keeping it all the same" in k.log() or "keeping it (a new one would need a new login)" in k.log(), k.log()
    with capsys.disabled():
        print(f"\n20 s cut: reconnected over the same login {answered:.1f} s after the link came back")


class Alias:
    """The same host under another alias, in a config of its own (with ``extra`` lines)."""

    def __init__(self, host, alias: str, directory: Path, extra: str) -> None:
        block = host.ssh_config.read_text().split(f"Host {host.alias}\n", 1)[1].split("\nHost ", 1)[0]
        self.alias, self.ssh_config = alias, directory / f"ssh_config_{alias}"
        self.ssh_config.write_text(f"Host {alias}\n{block.rstrip()}\n{extra}")
        self.ssh_config.chmod(0o600)


def test_a_cut_that_kills_the_login_leaves_kernels_waiting_until_the_next_login(otp_host, two_factor, tmp_path,
                                                                                 jupyter_env, capsys):
    """ssh gives the login's connection up (here after ~6 s without an answer: ServerAlive 2 s x 2
    from the user's config, which login honours); the kernels say once to log in again, wait,
    and after the login reattach to the same kernels."""
    short = Alias(otp_host, "otest-short", tmp_path, "  ServerAliveInterval 2\n  ServerAliveCountMax 2\n")
    prefix = tmp_path / "prefix"
    manage(short, prefix, "--host", short.alias, "--python", otp_host.env_prefix, "--name", "short")
    assert login(short, person(two_factor))[0] == 0
    ks = [Kernel(prefix, "short", tmp_path / f"proxy{i}.log") for i in range(2)]
    try:
        for k in ks:
            k.start(timeout=60)
            assert k.execute("x = 11")[0]["status"] == "ok"
        pids = [k.value("__import__('os').getpid()") for k in ks]
        otp_host.link_down()
        try:
            deadline = time.monotonic() + 60
            while ssh_masters(str(jupyter_env.runtime)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not ssh_masters(str(jupyter_env.runtime)), "ssh did not give the connection up"
        finally:
            otp_host.link_up()
        for k in ks:
            wait_for(k.log_path, "waiting for login:", timeout=60)
        time.sleep(5)  # more attempts would show up as more lines
        for k in ks:
            assert k.log().count("waiting for login:") == 1, k.log()
            assert "ssh-ipykernel login --ssh-config" in k.log()
            assert k.proxy.poll() is None
        status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True, timeout=30).stdout
        assert status.count("waiting for login") == 2, status
        assert login(short, person(two_factor))[0] == 0
        logged_in = time.monotonic()
        for k in ks:
            wait_for(k.log_path, "reconnected after", timeout=60)
        took = time.monotonic() - logged_in
        for k in ks:
            answers(k)
        assert [shell_value(k, "__import__('os').getpid()") for k in ks] == pids
        assert [shell_value(k, "x") for k in ks] == ["11", "11"]
        noticed = [re.search(r"noticed (\d+\.\d+) s after the login", k.log()).group(1) for k in ks]
    finally:
        for k in ks:
            k.shutdown()
    assert not wait_remote_clean(otp_host, timeout=20)
    with capsys.disabled():
        print(f"\nconnection killed: both kernels waited, noticed the new login {', '.join(noticed)} s after it "
              f"and were reattached {took:.2f} s after the login command returned")


def test_logout_ends_the_login(otp_host, two_factor, jupyter_env):
    assert login(otp_host, person(two_factor), args=("--persist", "never"))[0] == 0
    assert ssh_masters(str(jupyter_env.runtime))
    status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True, timeout=30).stdout
    assert "until logout" in status
    logins = json.loads(subprocess.run([SCRIPT, "status", "--json"], capture_output=True, text=True,
                                       timeout=30).stdout)["logins"]
    assert [(r["host"], r["persist"]) for r in logins] == [(otp_host.alias, None)], logins
    r = subprocess.run([SCRIPT, "logout", "--ssh-config", str(otp_host.ssh_config), otp_host.alias],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "Logged out of otest" in r.stdout, r.stdout + r.stderr
    deadline = time.monotonic() + 5
    while ssh_masters(str(jupyter_env.runtime)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ssh_masters(str(jupyter_env.runtime))
    status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True, timeout=30).stdout
    assert "Logged in" not in status


def test_a_passphrase_key_without_an_agent(ssh_host, tmp_path, monkeypatch):
    """btest takes keys only; this key has a passphrase and there is no agent: the login asks
    for the passphrase, then kernels use the connection."""
    from kernels import PASSPHRASE, passphrase_copy

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    text = ssh_host.ssh_config.read_text()
    block = text.split(f"Host {ssh_host.alias}\n", 1)[1].split("\nHost ", 1)[0]
    identity = next(line.split(None, 1)[1].strip('"') for line in block.splitlines()
                    if line.strip().startswith("IdentityFile"))
    key = passphrase_copy(Path(identity), tmp_path / "id_locked")
    # ssh takes the first IdentityFile line it reads for a name: this one comes first.
    Host = Alias(ssh_host, "btest-locked", tmp_path, "")
    Host.ssh_config.write_text(f'Host btest-locked\n  IdentityFile "{key}"\n' + Host.ssh_config.read_text()
                               .replace("Host btest-locked\n", "", 1))

    prefix = tmp_path / "prefix"
    manage(Host, prefix, "--host", "btest-locked", "--python", ssh_host.env_prefix, "--name", "locked")
    code, shown, _ = login(Host, [(r"Enter passphrase for key '.*id_locked': ", PASSPHRASE)])
    assert code == 0, shown
    assert PASSPHRASE not in shown
    k = Kernel(prefix, "locked", tmp_path / "proxy.log")
    try:
        k.start(timeout=60)
        assert k.value("6 * 7") == "42"
        assert "(shared connection)" in k.log()
    finally:
        k.shutdown()
