"""The agent server: a session's agent kept ready on the remote, so that a restart starts no python.

A kernel's restart in Jupyter is a new proxy, which used to start a new remote session: an ssh
client process, the remote shell and python, the agent's modules sent and compiled, then the
agent's work (about 0.1 s on a quiet LAN host, and a round trip or more of a slow link). After a
start, the agent forks this server (``ensure``): a copy of itself, with its modules loaded, its
login environment (after ``--pre-command``) and its working directory, listening on
``agent-<hash>.sock`` in the runtime dir (0600 in a 0700 directory: nobody else can connect).
The proxy of the restarted kernel reaches it over the SSH connection directly (a
direct-streamlocal channel, as it reaches a keeper), reads its greeting, sends the agent's
parameter line, and the server forks a child that is that session's agent from there on: the
same code, on that connection instead of an SSH session's stdin and stdout.

The hash covers the python, the working directory, the login environment without the values of
one SSH session (warm.PER_START) and the agent's own sources (``bundle_id``): another
configuration or another version of ssh_ipykernel is another server. Only a restart uses it
(the proxy keeps the server's path per Jupyter kernel id): a restart keeps the environment its
kernel started with, as a local kernel's restart does; a new kernel reads the login environment
again. The server lives while any kernel of the user's runs on the host (a restart may come at
any time) and ends ``idle`` seconds (``--warm``) after the last one ended and it last served.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys

from .protocol import Event, event_line
from .warm import PER_START

#: What a socket address holds (a unix socket path: 108 bytes on Linux, 104 on macOS).
MAX_SOCKET_PATH = 100
#: What ``ps`` shows of a server (its agents show an agent's command line again).
TITLE = "ssh_ipykernel-restart-server"
#: How often the server reaps its children and checks its idle time.
TICK = 1.0


def shipped_sources() -> "dict | None":
    """The sources this agent runs (the loader's table, remote/loader.py); None when it runs
    from an installed package (tests)."""
    for finder in sys.meta_path:
        sources = getattr(finder, "sources", None)
        if isinstance(sources, dict) and getattr(finder, "package", "") == __name__.rpartition(".")[0]:
            return sources
    return None


def socket_path(directory: str, *, bundle: str) -> str:
    """This agent's server in ``directory``: a hash of its python, working directory,
    environment (without one session's values) and code."""
    env = {k: v for k, v in os.environ.items() if k not in PER_START}
    key = json.dumps([sys.executable, os.getcwd(), sorted(env.items()), bundle, os.getuid()])
    return os.path.join(directory, "agent-%s.sock" % hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16])


def ensure(path: str, *, idle: float, serve_session) -> bool:
    """Fork the server at ``path`` unless one answers there; whether one serves (or will in a
    moment). ``serve_session()``: what each child runs on its connection, as its stdin and
    stdout (bootstrap.main).
    Call it while this process has one thread: the server is a fork of it."""
    if len(path.encode()) > MAX_SOCKET_PATH:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True  # one serves this configuration already
    except OSError:
        pass
    finally:
        probe.close()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes
        try:
            os.setsid()
            if os.fork() > 0:
                os._exit(0)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.closerange(3, 1024)  # the session's other descriptors: nothing of it stays open here
            Server(path, idle=idle, serve_session=serve_session).run()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    return True


class Server:
    """Accept, greet, fork an agent per connection; end when idle (see the module docstring)."""

    def __init__(self, path: str, *, idle: float, serve_session) -> None:
        self.path = path
        self.idle = idle
        self.serve_session = serve_session
        self.children = set()  # type: set
        self.cmdline = []  # type: list  # the agent's, as /proc showed it

    def run(self) -> None:
        import fcntl
        import time

        from .launch import show_command_line

        try:
            with open("/proc/self/cmdline", "rb") as f:
                self.cmdline = f.read().rstrip(b"\0").decode("utf-8", "surrogateescape").split("\0")
        except OSError:
            self.cmdline = []
        if self.cmdline:
            show_command_line([TITLE, sys.executable])

        lock = os.open(self.path[: -len(".sock")] + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another agent made this configuration's server a moment ago
        listener = self._listen()
        if listener is None:
            return
        last = time.monotonic()
        try:
            while time.monotonic() - last < self.idle or self.children:
                listener.settimeout(TICK)
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    conn = None
                self._reap()
                if conn is not None or self._kernels_run():
                    last = time.monotonic()
                if conn is not None:
                    self._fork(conn, listener)
        finally:
            for name in (self.path, self.path[: -len(".sock")] + ".lock"):
                try:
                    os.unlink(name)
                except OSError:
                    pass
            listener.close()

    def _kernels_run(self) -> bool:
        """Whether a kernel of ours runs on this host (its keeper's socket is in the runtime
        dir): a restart may come for it at any time."""
        try:
            names = os.listdir(os.path.dirname(self.path))
        except OSError:
            return False
        return any(name.startswith("kernel-ssh-") and name.endswith(".sock") for name in names)

    def _listen(self) -> "socket.socket | None":
        from .unixsock import listen_unix

        try:
            os.unlink(self.path)  # a dead server's (we hold the lock: no live one)
        except OSError:
            pass
        try:
            return listen_unix(self.path, 16)
        except OSError:
            return None

    def _fork(self, conn: socket.socket, listener: socket.socket) -> None:
        try:
            conn.sendall(event_line(Event.HELLO))  # the far end speaks first (transport.open_unix_stream)
            pid = os.fork()
        except OSError:
            conn.close()
            return
        if pid == 0:  # pragma: no cover - runs in the forked process
            try:
                listener.close()
                if self.cmdline:  # an agent again, to ps too
                    from .launch import show_command_line

                    show_command_line(self.cmdline)
                os.dup2(conn.fileno(), 0)
                os.dup2(conn.fileno(), 1)
                conn.close()
                sys.stdin = os.fdopen(0, "r", closefd=False)
                sys.stdout = os.fdopen(1, "w", closefd=False)
                self.serve_session()
            finally:
                os._exit(0)
        conn.close()
        self.children.add(pid)

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)
