"""A stream to a unix socket on the remote, shaped like the session process of start_command.

Re-attaching to a running kernel used to start a remote python for every reconnect (the shipped
loader over stdin, then ``attach`` relaying between its stdio and the keeper's unix socket).
SSH can reach that socket itself: a ``direct-streamlocal@openssh.com`` channel (OpenSSH's
``ssh -W /path``) makes sshd connect to it as the user, and the keeper greets the new client
exactly as it greets a relay. No process starts on the remote and no program crosses the link:
one channel-open round trip instead of a login shell, a python start and a few hundred KB of
source. Servers may forbid it (``AllowStreamLocalForwarding no``, or ``DisableForwarding``);
the session client then falls back to the python relay (session/client.py).

``SocketSession`` wraps the local end of such a stream: stdin and stdout are the socket, stderr
is empty, and the "process" ends when the stream does, so the session client uses it the way it
uses a relay session.
"""
from __future__ import annotations

import os
import socket
from typing import IO, Callable, Optional


class SocketSession:
    """The local end of a stream to a remote unix socket, used like a subprocess.Popen.

    ``on_close`` releases what carries the stream (the control connection that holds an
    OpenSSH stdio forward, a paramiko channel); it is called once, by terminate()/kill().
    """

    def __init__(self, sock: socket.socket, on_close: Callable[[], None], *, args: str = "") -> None:
        self.sock = sock
        self.args = args
        self.pid = 0
        self.returncode: Optional[int] = None
        self._on_close: Optional[Callable[[], None]] = on_close
        sock.setblocking(True)
        self.stdin: IO[bytes] = sock.makefile("wb")
        self.stdout: IO[bytes] = sock.makefile("rb", buffering=0)
        err_r, err_w = os.pipe()
        os.close(err_w)  # nothing ever comes on stderr: at end of file at once
        self.stderr: IO[bytes] = os.fdopen(err_r, "rb", buffering=0)

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        """The stream has no exit status: it "exits" when it is closed here. A stream that ended
        by itself (the remote end closed it) has nothing more to say either."""
        if self.returncode is None:
            self.terminate()
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        if self.returncode is None:
            self.returncode = 0
        for stream in (self.stdin, self.stdout, self.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def kill(self) -> None:
        self.terminate()

