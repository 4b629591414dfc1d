"""The shared OpenSSH ControlMaster: one per (ssh config, host) for every kernel of this user.

The transport (openssh.py) finds the master that serves the control socket, or starts one
(``start_master``), under ``creation_lock``, an flock on a lock file beside the socket: kernels started at once (or reconnecting at once after an
outage) wait for the first one's handshake and then share its connection instead of each making
their own. The master is started with ``ControlPersist``: after authentication ssh moves it to
the background, where it outlives the proxy that started it and exits by itself a while after
its last client (the sessions and control connections of the proxies) is gone. No proxy owns
it, so no proxy's exit (normal, or SIGKILL) takes it away from the others.

Before it goes to the background the master runs on a pty under pexpect, which turns every
prompt and failure into a typed error (transport/messages.py) for whichever kernel had to
create it. ``retire()`` ends a master that a proxy found dead (no answer through it), but only
if it is still the one that proxy used: a replacement made meanwhile by another proxy is kept.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import time
from typing import Callable, Iterator, List, Optional

from .. import exceptions as exc
from .messages import PROMPT_RE
from .mux import MasterAbsent, MuxClient, MuxError

log = logging.getLogger(__name__)

READY_MARKER = "__ssh_ipykernel_master_ready__"
#: How long a master with a control socket that does not answer may take before we give up.
MUX_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1


def _find_prctl() -> "Callable[..., int] | None":
    # Looked up once, here: the forked child (preexec_fn) must not import or dlopen anything
    # while another thread of the proxy might hold the locks that needs.
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _find_prctl()


def die_with_parent() -> None:
    """preexec_fn for ssh children: end with the proxy, even when it is killed with SIGKILL.

    The children run in their own session (so Jupyter's killpg for an interrupt misses them),
    which also means nothing else would stop them if the proxy died: a leaked session would
    keep the remote kernel's keeper thinking somebody is attached.
    """
    if _prctl is None:  # not Linux: best effort only
        return
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def ignore_hangup_and_die_with_parent() -> None:
    """preexec_fn for the master: end with the proxy while it authenticates (see die_with_parent),
    and ignore SIGHUP, which ssh then keeps ignoring.

    ssh is the session leader of its pty; when it forks to the background its parent exits and
    the kernel sends SIGHUP to the pty's foreground group, which the child is still in until it
    calls setsid(): without this the new master is killed in that window (it was, every time, on
    Linux with OpenSSH 9.2).
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent()


@contextlib.contextmanager
def creation_lock(path: str, deadline: float, *, host: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600) until the block ends.

    Polled rather than blocking, so that a stop signal (which raises Cancelled from its
    handler) interrupts the wait, and so that the wait ends at ``deadline``.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        pause = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() >= deadline:
                msg = f"another kernel is still connecting to {host}; it did not finish in time"
                raise exc.ConnectionTimeoutError(msg, host=host)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def connect_mux(control_path: str, timeout: float = MUX_TIMEOUT) -> Optional[MuxClient]:
    """A control connection to the master at ``control_path``, or None if no usable master runs
    there (none, or one that does not even answer its control socket: it is replaced)."""
    try:
        return MuxClient(control_path, timeout)
    except MasterAbsent:
        return None
    except MuxError as e:
        log.warning("the ssh master at %s does not answer (%s); replacing it", control_path, e)
        return None


def remove_stale(control_path: str) -> None:
    """Remove a control socket no master listens on (left by one killed with SIGKILL)."""
    try:
        os.unlink(control_path)
        log.debug("removed the stale control socket %s", control_path)
    except FileNotFoundError:
        pass


class MasterFailed(Exception):
    """Starting the master failed; ``output`` is everything ssh printed, ``timed_out`` says if
    it was our own deadline that ended the attempt."""

    def __init__(self, output: str, timed_out: bool) -> None:
        super().__init__(output)
        self.output = output
        self.timed_out = timed_out


def start_master(argv: List[str], timeout: float, env: dict) -> None:
    """Run the master command under pexpect until it is ready and has gone to the background.

    Raises MasterFailed with ssh's output if it prompts, exits, or is not ready in ``timeout``.
    """
    import pexpect  # only the kernel that logs in needs it: the others start faster without

    log.debug("starting ssh master: %s", " ".join(argv))
    child = pexpect.spawn(argv[0], argv[1:], env=env, echo=False, timeout=None,
                          preexec_fn=ignore_hangup_and_die_with_parent)
    try:
        index = child.expect([READY_MARKER, PROMPT_RE, pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
        output = (child.before or b"") + (child.after if isinstance(child.after, bytes) else b"")
        if index != 0:
            raise MasterFailed(output.decode("utf-8", "replace"), timed_out=index == 3)
        # The marker comes from the LocalCommand, run just before ssh forks to the background;
        # its foreground process exits right after. (With -v the background master keeps the
        # pty as its stderr, so wait for the process, not for end-of-file.)
        deadline = time.monotonic() + 5
        while child.isalive() and time.monotonic() < deadline:
            time.sleep(0.002)
        if not child.isalive():
            child.ptyproc.delayafterclose = 0  # pexpect would wait 0.1 s for a process long gone
    finally:
        child.close(force=True)


def retire(control_path: str, pid: int, *, is_ours: Callable[[int], bool],
           logger: "logging.Logger | logging.LoggerAdapter" = log) -> bool:  # type: ignore[type-arg]
    """End the master at ``control_path`` if it is still the one with ``pid``; True if ended.

    The alive check and the terminate request travel over one control connection, which only
    ever talks to the process that accepted it: a master that replaced ``pid`` is never hit.
    """
    try:
        mux = MuxClient(control_path, timeout=2.0)
    except MasterAbsent:
        return False  # already gone (its socket went with it, or connect() removes it)
    except MuxError:
        mux = None  # it does not even answer its control socket: hung
    try:
        if mux is not None:
            try:
                current = mux.alive_check(timeout=2.0)
            except MuxError:
                current = None
            if current is not None and current != pid:
                return False
            if current == pid:
                logger.info("ending the shared ssh connection (master pid %d): it does not answer", pid)
                try:
                    mux.terminate(timeout=2.0)
                except MuxError:
                    pass
        if not _wait_gone(pid, 2.0) and is_ours(pid):
            logger.warning("killing the ssh master pid %d: it does not answer on its control socket", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # A socket it left behind is removed by the next connect(), under the creation lock:
        # removing it here could race with a new master being bound at the same path.
        return True
    finally:
        if mux is not None:
            mux.close()


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
