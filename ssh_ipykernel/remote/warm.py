"""Warm kernels, the keeper's side: find the warm pool for a kernel's configuration, ask it for a
kernel, or start one and hold on to it (the pool itself is remote/warmpool.py).

A pool serves one configuration: the python, the kernel's environment (the login environment
after --pre-command, the --env values) and its working directory; its socket's name is a hash
of them. Values that differ between two starts of the same configuration (the SSH session's
own, the notebook's name, the keeper's pid) are left out of the hash and set per kernel. Only
the default kernel (``python -m ipykernel_launcher -f FILE``) is started warm; any other
kernel, a missing or refusing pool, or an error here means the usual cold start.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time

from .protocol import PoolOp

#: Environment variables that may differ between two starts of one configuration: the kernel
#: gets the request's values, and they do not choose the pool.
PER_START = frozenset({
    "JPY_PARENT_PID", "JPY_SESSION_NAME", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "SSH_AUTH_SOCK",
    "XDG_SESSION_ID", "KRB5CCNAME", "_",
})
#: What the pool's python runs: its program (pool_program) from stdin, framed as the agent's is
#: (session/bundle.py: LOADER); the pool's parameters, one JSON line, follow it.
BOOT = 'import sys;b=sys.stdin.buffer;exec(compile(b.read(int(b.readline())),"ssh_ipykernel-warm-pool","exec"))'
#: The pool's modules: warmpool.main is its entry point.
POOL_MODULES = ("launch", "unixsock", "warmpool")
#: Spare room at the end of the pool's argv, for the titles it and its kernels show in ps.
TITLE_ROOM = 2048
TITLE = "ssh_ipykernel-warm-pool"
REPLY_WAIT = 10.0  # for the pool's answer to a request (a fork: milliseconds)
LOCK_WAIT = 5.0  # for a new pool to take its lock (a python's start on a busy host)


def is_default_ipykernel(argv: list, python: str) -> bool:
    """Whether ``argv`` is the default kernel's command (kernelcmd.kernel_command)."""
    return len(argv) == 5 and argv[:4] == [python, "-m", "ipykernel_launcher", "-f"]


def pool_socket(directory: str, python: str, env: dict, cwd: str) -> str:
    """The socket of the pool that serves kernels of this configuration on this host (the
    runtime dir may be a home directory shared by the nodes of a cluster)."""
    fixed = sorted((k, v) for k, v in env.items() if k not in PER_START)
    identity = [socket.gethostname(), python, cwd, fixed]
    digest = hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()[:20]
    return os.path.join(directory, "warm-%s.sock" % digest)


def connect(path: str, timeout: float) -> socket.socket:
    """A connection to the pool listening at ``path`` (OSError if none answers)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def read_line(sock: socket.socket, buf: bytearray) -> "dict | None":
    """The pool's next JSON line (None at end of file); ``buf`` keeps what follows it."""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return None
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line.decode("utf-8"))


class WarmKernel:
    """A kernel forked by a pool, seen as the subprocess.Popen the keeper would otherwise hold
    (pid, poll, wait, returncode, send_signal): the pool reports its exit on our connection,
    which also holds the pool for as long as the kernel lives."""

    def __init__(self, sock: socket.socket, pid: int, buf: bytearray) -> None:
        self.sock = sock
        self.pid = pid
        self.returncode = None  # type: int | None
        self._buf = buf
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="warm-kernel", daemon=True).start()

    def _watch(self) -> None:
        self.sock.settimeout(None)
        try:
            while True:
                message = read_line(self.sock, self._buf)
                if message is None:
                    break
                if message.get("exited") == self.pid:
                    self.returncode = int(message["returncode"])
                    self._done.set()
                    return
        except (OSError, ValueError, TypeError, KeyError):
            pass
        # The pool is gone (killed): its kernels are orphans now; watch the pid itself.
        while True:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            except OSError:
                pass
            time.sleep(0.2)
        self.returncode = 1  # unknown: not a clean exit
        self._done.set()

    def poll(self) -> "int | None":
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: "float | None" = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired("warm kernel %d" % self.pid, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if not self._done.is_set():
            os.kill(self.pid, signum)


def start_kernel(path: str, *, argv: list, env: dict, cwd: str, log_file: str, note,
                 iopub_hwm: int = 0) -> "WarmKernel | None":
    """A kernel forked by the pool at ``path``; None if there is none or it refuses (stale).
    ``iopub_hwm``: the send queue of the kernel's IOPub socket (launch.IOPUB_HWM)."""
    try:
        sock = connect(path, REPLY_WAIT)
    except OSError:
        return None  # no pool (yet): the usual start
    request = {"op": PoolOp.START, "argv": argv, "env": env, "cwd": cwd, "log_file": log_file, "iopub_hwm": iopub_hwm}
    buf = bytearray()
    try:
        sock.sendall((json.dumps(request) + "\n").encode("utf-8"))
        reply = read_line(sock, buf)
    except (OSError, ValueError) as e:
        sock.close()
        note("the warm pool did not answer (%s); starting the kernel cold" % e)
        return None
    if not reply or not isinstance(reply.get("pid"), int):
        sock.close()
        note("the warm pool refused (%s); starting the kernel cold" % (reply or {}).get("reason", reply))
        return None
    return WarmKernel(sock, reply["pid"], buf)


def pool_info(path: str, timeout: float) -> "dict | None":
    """The facts of the pool listening at ``path`` (warmpool.Pool.info); None if no pool answers
    there (gone, another node's socket in a shared home, or one too busy to answer in time)."""
    try:
        sock = connect(path, timeout)
    except OSError:
        return None
    try:
        sock.sendall((json.dumps({"op": PoolOp.INFO}) + "\n").encode("utf-8"))
        info = read_line(sock, bytearray())
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def pool_program() -> bytes:
    """The warm pool's program: loader.py, then ``run`` of warmpool.main with POOL_MODULES, made
    from the sources this agent was shipped (the same text as a session's: session/bundle.py)."""
    import importlib

    from . import loader

    def source(module) -> str:  # noqa: ANN001 - a module
        return module.__loader__.get_source(module.__name__)

    sources = {}
    for name in POOL_MODULES:
        module = importlib.import_module("." + name, __package__)
        sources[name] = (loader.FILENAME % name, source(module))
    return loader.program(source(loader), sources, "warmpool").encode("utf-8")


def spawn_pool(path: str, *, python: str, env: dict, cwd: str, idle: float) -> None:
    """Start a pool for this configuration (it daemonises; one that finds another serving
    ``path`` exits at once)."""
    program = pool_program()
    params = {"socket": path, "idle": idle, "title": [TITLE, python]}
    log_fd = os.open(path[: -len(".sock")] + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pool_env = {k: v for k, v in env.items() if k not in ("JPY_PARENT_PID", "JPY_SESSION_NAME")}
    try:
        proc = subprocess.Popen([python, "-c", BOOT, " " * TITLE_ROOM], stdin=subprocess.PIPE, stdout=log_fd,
                                stderr=log_fd, env=pool_env, cwd=cwd, close_fds=True, start_new_session=True)
    finally:
        os.close(log_fd)
    try:
        proc.communicate(b"%d\n" % len(program) + program + (json.dumps(params) + "\n").encode("utf-8"), timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pool_starting(path: str) -> bool:
    """Whether a pool holds the lock of ``path`` (it is importing, or serving): kernels started
    together then start one python for their pool, not one each."""
    import fcntl

    try:
        fd = os.open(path[: -len(".sock")] + ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also lets go of the lock if we took it
    return False


def ensure_pool(path: str, *, python: str, env: dict, cwd: str, idle: float, timeout: float, note) -> bool:
    """Start the pool of this configuration unless one is starting or serving; wait until it
    serves. False: it did not come (its log, beside its socket, says why)."""
    try:
        deadline = time.monotonic() + timeout
        spawned_at = None  # type: float | None
        while time.monotonic() < deadline:
            try:
                connect(path, REPLY_WAIT).close()
                return True
            except OSError:
                pass
            if not pool_starting(path):
                now = time.monotonic()
                if spawned_at is None:
                    spawn_pool(path, python=python, env=env, cwd=cwd, idle=idle)
                    spawned_at = now
                elif now - spawned_at > LOCK_WAIT:
                    break  # it never took its lock, or died while importing
            time.sleep(0.01)
    except Exception as e:  # noqa: BLE001 - warm kernels are an optimisation: never fail the kernel
        note("could not start a warm pool: %s" % e)
        return False
    note("the warm pool did not start (see %s); starting the kernel cold" % (path[: -len(".sock")] + ".log"))
    return False
