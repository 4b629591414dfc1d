"""Local port forwards of one proxy, carried by the shared master but owned by the proxy.

``ssh -O forward`` would put the listening sockets into the master, where they outlive a proxy
killed with SIGKILL: its local ports would stay bound (a hard restart reuses them) and the
clients' open connections would keep talking to the old kernel. Here the proxy listens itself,
and hands every accepted connection to the master as a stdio forward (``ssh -W`` over the
control socket, the connection's descriptor passed along): the master relays it directly, with
no copy through the proxy, and ends it when the proxy's control connection for it closes. So
when the proxy goes, however it goes, its ports are free and its clients are cut at once.

One background thread accepts and hands over; Python only touches a connection's first moment.
"""
from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .. import exceptions as exc
from .base import Forward
from .mux import MuxClient, MuxError

log = logging.getLogger(__name__)


class BindError(Exception):
    """Some local ports could not be listened on; ``busy`` lists those already taken."""

    def __init__(self, message: str, busy: List[int]) -> None:
        super().__init__(message)
        self.busy = busy

    def tunnel_error(self, host: str, *, detail_label: Optional[str] = None) -> exc.TunnelError:
        """The error the user sees: the busy port and how to find its holder, if that is why."""
        if self.busy:
            ports = ", ".join(str(p) for p in self.busy)
            msg = (
                f"local port {ports} is already in use, so the kernel's channel cannot be forwarded "
                f"there. Another program (or a kernel that did not shut down) holds it; restart the "
                f"kernel to get new ports, or find the holder with `ss -ltnp | grep {self.busy[0]}`"
            )
            return exc.TunnelError(msg, host=host)
        return exc.TunnelError(f"could not listen for the kernel's channels of {host}", host=host, detail=str(self),
                               detail_label=detail_label)


#: Local ports bound at the proxy's start, before it connects, and listened on once the kernel is
#: up (reserve(); _listen takes them). Jupyter picked the ports and released them when it wrote the
#: connection file; a kernel of ours only listens after the login and the remote start (1-2 s), and
#: on a busy machine an outgoing connection was handed one of them meanwhile ("local port ... is
#: already in use"). A local kernel binds them at once: so do we.
_reserved: Dict[Tuple[str, int], socket.socket] = {}
_reserved_lock = threading.Lock()


def _bound(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As ssh does for -L: a port whose last connections linger in TIME_WAIT (the previous
        # proxy of a restarted kernel) can be listened on again at once. Two listeners on one
        # port are still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reserve(host: str, ports: Iterable[int]) -> List[int]:
    """Bind ``ports`` on ``host`` now, without listening (a client's connect is refused, as before
    the kernel is up, and ZeroMQ retries); the forwards listen on these sockets later. Returns the
    ports that could not be bound (left to the forwards, which then say why)."""
    failed = []
    for port in ports:
        try:
            sock = _bound(host, port)
        except OSError:
            failed.append(port)
            continue
        with _reserved_lock:
            old = _reserved.pop((host, port), None)
            _reserved[(host, port)] = sock
        if old is not None:
            old.close()
    return failed


def release_reserved() -> None:
    """Let go of reserved ports nobody listened on (a start-up that ended early)."""
    with _reserved_lock:
        socks = list(_reserved.values())
        _reserved.clear()
    for sock in socks:
        sock.close()


def _listen(fwd: Forward) -> socket.socket:
    with _reserved_lock:
        sock = _reserved.pop((fwd.local_host, fwd.local_port), None)
    if sock is None:
        sock = _bound(fwd.local_host, fwd.local_port)
    try:
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Listeners:
    """Listeners for forwards, served by one thread until ``close()`` (safe to call twice).

    What becomes of an accepted connection is the subclass's: ``_take`` (called by the thread,
    without the lock) and ``_cut`` (the connections some forwards carry; with the lock held).
    Other objects a subclass registers with ``_sel`` come back to its ``_service``.
    """

    thread_name = "ssh_ipykernel-forwarder"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._listeners: Dict[Forward, socket.socket] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    # -- called by the transport ---------------------------------------------------------------
    def add(self, forwards: Sequence[Forward]) -> None:
        """Listen on the forwards' local ports (all or none); BindError if one cannot be."""
        opened: List[Tuple[Forward, socket.socket]] = []
        for fwd in forwards:
            try:
                opened.append((fwd, _listen(fwd)))
            except OSError as e:
                for _, sock in opened:
                    sock.close()
                busy = [fwd.local_port] if e.errno in (errno.EADDRINUSE, errno.EACCES) else []
                raise BindError(f"cannot listen on {fwd.local_host}:{fwd.local_port}: {e.strerror}", busy) from e
        with self._lock:
            for fwd, sock in opened:
                old = self._listeners.pop(fwd, None)
                if old is not None:
                    self._unregister(old)
                self._listeners[fwd] = sock
                self._sel.register(sock, selectors.EVENT_READ, fwd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self._thread.start()
        self._wake()

    def remove(self, forwards: Iterable[Forward]) -> None:
        """Stop listening on these forwards and cut the connections they carry."""
        wanted = set(forwards)
        with self._lock:
            for fwd in wanted:
                sock = self._listeners.pop(fwd, None)
                if sock is not None:
                    self._unregister(sock)
            self._cut(wanted)
        self._wake()

    def listening(self) -> List[Forward]:
        with self._lock:
            return list(self._listeners)

    def close(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            for sock in self._listeners.values():
                self._unregister(sock)
            self._listeners.clear()
            self._cut(None)
        self._wake()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()

    # -- for subclasses ------------------------------------------------------------------------
    def _take(self, conn: socket.socket, fwd: Forward) -> None:
        """Carry a connection just accepted on ``fwd``'s port (the thread, without the lock)."""
        raise NotImplementedError

    def _cut(self, forwards: Optional[Set[Forward]]) -> None:
        """Cut the connections these forwards carry (None: all); the lock is held."""
        raise NotImplementedError

    def _service(self, data: object) -> None:
        """Something a subclass registered with ``_sel`` is readable; the lock is held."""

    def _wanted(self, fwd: Forward) -> bool:
        """Whether ``fwd`` is still listened on (not removed or closed meanwhile); lock held."""
        return not self._stopping and fwd in self._listeners

    # -- the thread --------------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _unregister(self, sock: socket.socket) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def _run(self) -> None:
        while True:
            events = self._sel.select()
            accepted: List[Tuple[socket.socket, Forward]] = []
            with self._lock:
                if self._stopping:
                    return
                for key, _ in events:
                    if key.data is None:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except OSError:
                            pass
                    elif isinstance(key.data, Forward):
                        if self._listeners.get(key.data) is key.fileobj:
                            accepted += [(conn, key.data) for conn in _accept_all(key.fileobj)]  # type: ignore[arg-type]
                    else:
                        self._service(key.data)
            # Without the lock: a slow hand-over must not hold up remove() and close() in the
            # proxy's main thread.
            for conn, fwd in accepted:
                self._take(conn, fwd)


class Forwarder(Listeners):
    """Each accepted connection handed to the shared master (see the module's docstring)."""

    def __init__(self, control_path: str) -> None:
        super().__init__()
        self.control_path = control_path
        self._carried: Dict[MuxClient, Forward] = {}  # one control connection per relayed connection

    def _take(self, conn: socket.socket, fwd: Forward) -> None:
        mux = self._hand_over(conn, fwd)
        if mux is None:
            return
        with self._lock:
            if not self._wanted(fwd):
                mux.close()  # cancelled meanwhile: cut it, as remove() would have
                return
            assert mux.sock is not None
            mux.sock.setblocking(False)
            self._carried[mux] = fwd
            self._sel.register(mux.sock, selectors.EVENT_READ, mux)

    def _cut(self, forwards: Optional[Set[Forward]]) -> None:
        for mux, fwd in list(self._carried.items()):
            if forwards is None or fwd in forwards:
                self._drop(mux)

    def _drop(self, mux: MuxClient) -> None:
        self._carried.pop(mux, None)
        if mux.sock is not None:
            self._unregister(mux.sock)
        mux.close()

    def _hand_over(self, conn: socket.socket, fwd: Forward) -> Optional[MuxClient]:
        """Pass an accepted connection to the master; None if it could not be (it is closed)."""
        try:
            mux = MuxClient(self.control_path, timeout=5.0)
            try:
                mux.send_stdio_forward(fwd.remote_host, fwd.remote_port, conn.fileno())
            except MuxError:
                mux.close()
                raise
        except MuxError as e:
            # The master is gone: the client sees its connection close and retries, and the
            # supervisor reconnects.
            log.debug("cannot forward a connection on %s: %s", fwd.spec(), e)
            return None
        finally:
            conn.close()  # the master has its own copy now (or nobody needs it)
        return mux

    def _service(self, mux: MuxClient) -> None:  # type: ignore[override]  # with the lock held
        """The master's answer (opened, or refused by the server) or its end-of-file (the
        relayed connection ended, or the master did): only the end matters."""
        if mux.poll_eof():
            self._drop(mux)


def _accept_all(listener: socket.socket) -> List[socket.socket]:
    accepted = []
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        except OSError as e:
            log.debug("accept: %s", e)
            return accepted
        conn.setblocking(True)
        # As ssh does for the connections its own -L listeners accept: without it, Nagle holds
        # back a small write (a ZeroMQ message) until the previous one is acknowledged, and the
        # client's delayed ACK makes that ~40 ms: a third of all execute round trips took 44 ms.
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (never here), or already closed by the client
        accepted.append(conn)
