"""Hosts that need a person to log in: the shared connection opened by hand, and kernels that wait.

``ssh-ipykernel login HOST`` runs ``ssh -M`` for the host's control socket (the one its kernels
use: openssh.OpenSSHTransport.control_path) in the person's terminal. ssh itself asks every
question (password, one-time code, passphrase, a Duo-style menu) on the terminal and reads the
answers with its own echo rules, so no typed secret ever passes through this process; only
ssh's stderr (banners, errors) is read, to relay it and to classify a failure. Once logged in,
ssh moves the master to the background (ControlPersist) and its foreground exits 0.

The login leaves a record beside the socket (``cm-<hash>.login``: host, ssh config, when,
the persist time, the master's pid). It tells ``status`` which hosts are logged in since
when, and tells the kernels' transports that this connection cannot be replaced without a
person: they never end it for not answering (see OpenSSHTransport.close), they keep trying
over it until ssh itself gives up (ServerAlive).

A kernel that finds no connection and meets a prompt waits for the control socket to appear
(``wait_for_master``): a stat every POLL seconds, then one control connection.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

from .. import exceptions as exc
from . import master as shared
from .messages import classify_ssh_failure
from .mux import MuxClient, MuxError

log = logging.getLogger(__name__)

#: How often a waiting kernel looks for the control socket (a stat; a connect once it exists).
POLL = 0.05
RECORD_SUFFIX = ".login"


@dataclass(frozen=True)
class LoginRecord:
    """What ``login`` leaves beside the control socket."""

    host: str  # as written (--host)
    ssh_config: Optional[str]
    started: float  # epoch seconds
    persist: Optional[float]  # ControlPersist seconds; None: until logout or the connection dies
    pid: int  # the master's


def record_path(control_path: str) -> str:
    return control_path + RECORD_SUFFIX


def write_record(control_path: str, record: LoginRecord) -> None:
    path = record_path(control_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
    os.replace(tmp, path)


def read_record(control_path: str) -> Optional[LoginRecord]:
    try:
        with open(record_path(control_path)) as f:
            data = json.load(f)
        return LoginRecord(host=str(data["host"]), ssh_config=data.get("ssh_config"),
                           started=float(data["started"]), persist=data.get("persist"), pid=int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_record(control_path: str) -> None:
    try:
        os.unlink(record_path(control_path))
    except FileNotFoundError:
        pass


def is_login_master(control_path: str, pid: int) -> bool:
    """Whether the master ``pid`` at ``control_path`` was opened by ``login`` (a person)."""
    record = read_record(control_path)
    return record is not None and record.pid == pid


def logged_in(directory: str) -> List[LoginRecord]:
    """The logins whose connection is still up, oldest first; records of ended ones are removed."""
    found = []
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    for name in names:
        if not (name.startswith("cm-") and name.endswith(RECORD_SUFFIX)):
            continue
        control_path = os.path.join(directory, name[: -len(RECORD_SUFFIX)])
        record = read_record(control_path)
        pid = master_pid(control_path)
        if record is not None and pid == record.pid:
            found.append(record)
        else:
            remove_record(control_path)
    return sorted(found, key=lambda r: r.started)


def master_pid(control_path: str, timeout: float = 2.0) -> Optional[int]:
    """The pid of the master answering at ``control_path``, or None."""
    try:
        mux = MuxClient(control_path, timeout)
    except MuxError:
        return None
    try:
        return mux.alive_check(timeout)
    except MuxError:
        return None
    finally:
        mux.close()


def wait_for_master(control_path: str, deadline: float, wake_fd: Optional[int] = None) -> Optional[float]:
    """Until a master answers at ``control_path`` or ``deadline`` (monotonic) passes, or
    ``wake_fd`` becomes readable (None). Returns how long ago that master's socket was made:
    the delay between the login and this wait noticing it.

    Only watches: it never starts a master itself (a new connection needs a person, and every
    failed attempt would count against the account on servers that lock it out). Stop
    signals interrupt the sleep (the proxy's SignalRelay raises Cancelled during start-up).
    """
    while True:
        try:
            made = os.stat(control_path).st_mtime
        except OSError:
            made = None
        if made is not None and master_pid(control_path) is not None:
            return max(0.0, time.time() - made)
        if time.monotonic() >= deadline:
            return None
        if wake_fd is None:
            time.sleep(POLL)
        elif select.select([wake_fd], [], [], POLL)[0]:
            return None


def needs_terminal() -> None:
    """Raise UsageError unless a terminal is there for ssh to ask on."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        msg = (
            "`ssh-ipykernel login` needs a terminal to type the password or code into: run it in a "
            "terminal (in JupyterLab: File > New > Terminal)"
        )
        raise exc.UsageError(msg) from None


def _ignore_hangup() -> None:
    # The master forks to the background from the foreground ssh; SIGHUP in that instant (the
    # terminal closing) would kill it (see master.ignore_hangup_and_die_with_parent).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run_login(argv: List[str], *, control_path: str, host: str, spec: str, ssh_config: Optional[str],
              timeout: float, persist: Optional[float],
              on_output: Callable[[str], None] = lambda text: None) -> LoginRecord:
    """Run the login master ``argv`` on the terminal until it is in the background.

    ssh asks on /dev/tty; its stderr (banners, errors) goes to ``on_output`` as it arrives and
    is classified if the login fails. Returns the record written for the new master.
    """
    proc = subprocess.Popen(argv, stdin=None, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_ignore_hangup)
    assert proc.stderr is not None
    chunks: List[str] = []
    try:
        while True:
            data = os.read(proc.stderr.fileno(), 4096)
            if not data:
                break
            text = data.decode("utf-8", "replace")
            chunks.append(text)
            on_output(text)
        code = proc.wait()
    except BaseException:  # Ctrl-C: ssh got it too; make sure it is gone
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
        raise
    finally:
        proc.stderr.close()
    output = "".join(chunks)
    if code != 0:
        raise login_failure(output, host=host, spec=spec, ssh_config=ssh_config, timeout=timeout)
    pid = master_pid(control_path, timeout=5.0)
    if pid is None:
        msg = f"ssh logged in to {host} but its connection does not answer on {control_path}"
        raise exc.SSHConnectionError(msg, host=host, detail=output)
    record = LoginRecord(host=spec, ssh_config=ssh_config, started=time.time(), persist=persist, pid=pid)
    write_record(control_path, record)
    return record


def login_failure(output: str, *, host: str, spec: str, ssh_config: Optional[str],
                  timeout: Optional[float]) -> exc.SSHConnectionError:
    """The error for a login ssh gave up on: a refusal means the answers were wrong."""
    error = classify_ssh_failure(output, host=host, spec=spec, ssh_config=ssh_config, timeout=timeout)
    if type(error) is exc.AuthenticationError or isinstance(error, exc.LoginRequiredError):
        again = f"ssh-ipykernel login{f' --ssh-config {ssh_config}' if ssh_config else ''} {spec}"
        return exc.AuthenticationError(
            f"{host} did not accept the login (a wrong password, code or passphrase?). Run "
            f"`{again}` again; if it keeps failing, try `ssh{f' -F {ssh_config}' if ssh_config else ''} "
            f"{spec}` and ask the host's administrators",
            host=host, detail=error.detail,
        )
    return error


def end_stale(control_path: str, *, is_ours: Callable[[int], bool]) -> Optional[int]:
    """Before a login: the pid of a master at ``control_path`` that still answers the server
    (the host is logged in already), else None after ending one that does not (whoever made it:
    the person is here to log in anew)."""
    try:
        mux = MuxClient(control_path, 2.0)
    except MuxError:
        shared.remove_stale(control_path)
        return None
    try:
        pid = mux.alive_check(2.0)
        if mux.probe(3.0):
            return pid
    except MuxError:
        pid = 0
    finally:
        mux.close()
    if pid:
        log.info("the connection at %s (ssh pid %d) does not answer; ending it", control_path, pid)
        shared.retire(control_path, pid, is_ours=is_ours)
        deadline = time.monotonic() + 3
        while master_pid(control_path, 1.0) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    shared.remove_stale(control_path)
    remove_record(control_path)
    return None
