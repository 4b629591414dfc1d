"""The warm pool: a fork server with ipykernel imported, forking a kernel per request.

A program of its own, shipped as the agent is (remote/loader.py) with the one module it
imports, launch.py: a keeper (remote/warm.py) starts a fresh ``python -c`` of the kernel's own
interpreter, environment and working directory and sends it that program, then one line of
parameters (socket path, idle time, title), on its stdin. The python imports what
``python -m ipykernel_launcher`` imports before it starts a kernel (``ipykernel.kernelapp``),
then serves requests on a 0600 unix socket in the 0700 runtime dir. Each request (JSON lines:
argv, env, cwd, log file, connection file path; never the key, which is in the 0600 connection
file) is answered by a fork whose child becomes exactly what ``python -m ipykernel_launcher -f
FILE`` would be at that point: its own session and process group, the request's environment,
working directory, ``sys.argv``/``sys.orig_argv``, the process title ``ps`` shows and the IOPub
queue (both as a cold kernel gets them: launch.py), stdio on the log file, signal dispositions
and ``sys.modules`` and ``sys.meta_path`` as a fresh interpreter has them. The parent
reports the child's pid, then its exit status, on the request's connection. An ``info``
request (``ssh-ipykernel status``, through remote/pools.py) is answered with the pool's facts
(pid, python, resident memory, its kernels, when it ends) and the connection closed; asking
does not keep the pool alive.

Nothing may run before a fork that a fork cannot copy: no thread, no event loop, no ZeroMQ
context exists here (checked after the import; the pool refuses to start otherwise).

Lifetime: the pool ends ``idle`` seconds after its last connection (a kernel's request, or a
keeper's hold) closed and its last kernel ended (a connection that has not said what it wants
yet delays the end, but does not restart the idle time). It serves no more requests once the files of
its ``sys.path`` changed (a package installed, upgraded or removed): it removes its socket at
once (a new pool may start) and ends with its last kernel.

Standard library only, Python >= 3.8; runs on the remote.
"""
import os
import sys

from .launch import queue_iopub, show_command_line

#: Modules of the fresh interpreter (and the shipped package, forgotten by the child itself):
#: the kernel's child sees these plus the kernel's imports.
_BASELINE = set(sys.modules)


def rss_kb(pid: "int | str" = "self") -> "int | None":
    """Resident memory in kB (Linux: /proc), None if unknown."""
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Pool:
    """The server: a listener, connections, children; see the module docstring."""

    def __init__(self, params: dict, lock_fd: int) -> None:
        import selectors
        import signal
        import socket

        self.params = params
        self.pid = os.getpid()
        self.socket_path = params["socket"]
        self.idle = float(params["idle"])
        self.sel = selectors.DefaultSelector()
        self.conns = {}  # type: dict  # socket -> bytearray of what it sent
        self.holding = set()  # type: set  # connections that asked for a kernel or a hold
        self.children = {}  # type: dict  # pid -> the connection that asked for it
        self.listener = None  # type: socket.socket | None
        self.lock_fd = lock_fd
        self.stale = ""
        self.started = 0.0  # time.time() when it began to serve
        self.idle_since = None  # type: float | None  # monotonic; None while kernels or holds keep it
        self.mtimes = self._path_mtimes()
        self.signals = {s: signal.getsignal(s) for s in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM,
                                                       signal.SIGHUP, signal.SIGPIPE)}
        self.wake_r, self.wake_w = socket.socketpair()

    @staticmethod
    def _path_mtimes() -> dict:
        """When each ``sys.path`` entry last changed (a package installed, upgraded, removed
        changes its directory). Not the working directory (sys.path[0]): files come and go
        there all the time, and what the pool imported does not come from there."""
        mtimes = {}
        for entry in sys.path[1:]:
            try:
                mtimes[entry] = os.stat(entry or ".").st_mtime_ns
            except OSError:
                mtimes[entry] = None
        return mtimes

    def log(self, message: str) -> None:
        try:
            os.write(2, ("ssh_ipykernel warm pool %d: %s\n" % (os.getpid(), message)).encode("utf-8", "replace"))
        except OSError:
            pass

    # -- set-up -----------------------------------------------------------------------------
    def claim(self) -> None:
        """The pool's socket (its lock is held already): bound under a temporary name and
        renamed once it listens."""
        from .unixsock import listen_unix

        listener = listen_unix(self.socket_path, 64)
        listener.setblocking(False)
        self.listener = listener

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> "dict | None":
        """Serve until idle; in a forked child, return its request (the kernel to become)."""
        import selectors
        import signal
        import time

        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.sel.register(self.listener, selectors.EVENT_READ, "listener")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.started = time.time()
        self.idle_since = time.monotonic()
        checked = time.monotonic()
        terminated = False
        while True:
            for key, _ in self.sel.select(1.0):
                if key.data == "listener":
                    self._accept()
                elif key.data == "wake":
                    try:
                        terminated |= signal.SIGTERM in key.fileobj.recv(256)
                    except OSError:
                        pass
                else:
                    request = self._read(key.fileobj)
                    if request is not None:
                        child = self._start(key.fileobj, request)
                        if child is not None:
                            return child
            self._reap()
            now = time.monotonic()
            if now - checked > 10:
                checked = now
                self._check_paths()
            if terminated and not self.stale:
                self.stale = "terminated"
                self._retire()
            if self.children or (self.holding and not self.stale):
                self.idle_since = None
                continue
            if self.idle_since is None:
                self.idle_since = now
            if set(self.conns) - self.holding and not self.stale:
                continue  # a request on its way (a kernel's, or an info): not now
            if self.stale or now - self.idle_since >= self.idle:
                self.log("ending (%s)" % (self.stale or "idle for %.0f s" % self.idle))
                self._retire()
                try:
                    os.unlink(self.socket_path[: -len(".sock")] + ".log")
                except OSError:
                    pass
                return None

    def _accept(self) -> None:
        import selectors

        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.setblocking(True)
        self.conns[conn] = bytearray()
        self.sel.register(conn, selectors.EVENT_READ, "conn")

    def _read(self, conn) -> "dict | None":
        import json

        try:
            data = conn.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return None
        buf = self.conns[conn]
        buf += data
        if b"\n" not in buf:
            return None
        line, _, rest = bytes(buf).partition(b"\n")
        self.conns[conn] = bytearray(rest)
        try:
            request = json.loads(line.decode("utf-8"))
        except ValueError:
            self._send(conn, {"error": "not json"})
            return None
        op = request.get("op")
        if op == "info":
            self._send(conn, self.info())
            self._drop(conn)
            return None
        if op == "hold":
            self.holding.add(conn)
            self._send(conn, {"pid": self.pid})
            return None
        if op != "start":
            self._send(conn, {"error": "unknown op"})
            return None
        self.holding.add(conn)
        return request

    def info(self) -> dict:
        """What ``ssh-ipykernel status`` shows of this pool. ``ends_in``: seconds until it ends
        if nothing comes (None while it has kernels or holds)."""
        import time

        ends_in = None  # type: float | None
        if self.idle_since is not None:
            ends_in = 0.0 if self.stale else max(0.0, self.idle - (time.monotonic() - self.idle_since))
        return {"pid": self.pid, "python": sys.executable, "rss_kb": rss_kb(), "kernels": sorted(self.children),
                "idle": self.idle, "ends_in": ends_in, "serving": not self.stale, "stale": self.stale,
                "started": self.started, "socket": self.socket_path, "cwd": os.getcwd()}

    def _send(self, conn, message: dict) -> None:
        import json

        try:
            conn.sendall((json.dumps(message) + "\n").encode("utf-8"))
        except OSError:
            pass

    def _drop(self, conn) -> None:
        """A connection closed: a keeper ended. Its kernel (if any) has nobody to own it."""
        import signal

        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn, None)
        self.holding.discard(conn)
        conn.close()
        for pid, owner in list(self.children.items()):
            if owner is conn:
                self.children[pid] = None
                try:
                    os.killpg(pid, signal.SIGTERM)
                except OSError:
                    pass

    def _check_paths(self) -> None:
        if self.stale:
            return
        mtimes = self._path_mtimes()
        if mtimes != self.mtimes:
            changed = [entry for entry in mtimes if mtimes[entry] != self.mtimes.get(entry)]
            self.stale = "the files of %s changed" % ", ".join(changed)
            self._retire()

    def _retire(self) -> None:
        """No more requests: the socket goes (a new pool may start), the kernels stay."""
        if self.listener is None:
            return
        try:
            self.sel.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        try:
            os.unlink(self.socket_path)  # ours: we hold the lock until just below
        except OSError:
            pass
        self.listener.close()
        self.listener = None
        try:
            # A start that opened it just now may lock the unlinked file and serve a socket
            # nobody finds; it idles out (nothing is lost but that pool's memory, briefly).
            os.unlink(self.socket_path[: -len(".sock")] + ".lock")
        except OSError:
            pass
        os.close(self.lock_fd)
        self.lock_fd = -1
        for conn in list(self.conns):
            if conn not in self.children.values():  # a hold: nothing to keep it for now
                self.sel.unregister(conn)
                del self.conns[conn]
                self.holding.discard(conn)
                conn.close()
        if self.stale:
            self.log("no more kernels from this pool: %s" % self.stale)

    def _start(self, conn, request: dict) -> "dict | None":
        self._check_paths()
        if self.stale:
            self._send(conn, {"error": "stale", "reason": self.stale})
            return None
        try:
            log_fd = os.open(request["log_file"], os.O_WRONLY | os.O_APPEND)
        except (OSError, KeyError, TypeError) as e:
            self._send(conn, {"error": "log file: %s" % e})
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as e:  # out of processes or memory: the keeper starts it cold
            os.close(log_fd)
            self._send(conn, {"error": "fork", "reason": "cannot fork: %s" % e})
            return None
        if pid == 0:  # pragma: no cover - the kernel-to-be
            self._become_child(log_fd)
            return request
        os.close(log_fd)
        self.children[pid] = conn
        self._send(conn, {"pid": pid})
        return None

    def _become_child(self, log_fd: int) -> None:
        """In the child: let go of everything that is the pool's, as a fresh process has nothing."""
        import signal

        os.setsid()  # its own session and process group: interrupts go to the kernel's group
        signal.set_wakeup_fd(-1)
        for signum, handler in self.signals.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.sel.close()
        for conn in self.conns:
            conn.close()
        if self.listener is not None:
            self.listener.close()
        self.wake_r.close()
        self.wake_w.close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, 65536)  # as Popen(close_fds=True) starts a cold kernel

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            if conn is not None:
                self._send(conn, {"exited": pid, "returncode": code})


def forget_shipped() -> None:
    """In the child: the loader's finder and the shipped package (this module, launch.py) are
    the pool's; a kernel started cold has neither."""
    if __loader__ not in sys.meta_path:
        return  # imported as a module of ssh_ipykernel (the tests): nothing was shipped
    sys.meta_path.remove(__loader__)
    package = __name__.rpartition(".")[0]
    for name in [name for name in sys.modules if name == package or name.startswith(package + ".")]:
        del sys.modules[name]


def become_kernel(request: dict, kernel_modules: set, set_by_imports: dict, unset_by_imports: list) -> None:
    """Turn this forked child into ``python -m ipykernel_launcher -f FILE`` (then run it)."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.update(set_by_imports)
    for name in unset_by_imports:
        os.environ.pop(name, None)
    argv = request["argv"]  # [python, -m, ipykernel_launcher, -f, FILE]
    show_command_line(argv)
    # Defaults ipykernel read from the environment when the pool imported it.
    from ipykernel.kernelapp import IPKernelApp

    for trait, variable in (("parent_handle", "JPY_PARENT_PID"), ("interrupt", "JPY_INTERRUPT_EVENT")):
        declared = IPKernelApp.class_traits().get(trait)
        try:
            value = int(os.environ.get(variable) or 0)
        except ValueError:
            continue
        if declared is not None:
            declared.default_value = value
            # traitlets >= 5.x also keeps a class's static defaults in a cache of its own.
            cached = IPKernelApp.__dict__.get("_static_immutable_initial_values")
            if isinstance(cached, dict) and trait in cached:
                cached[trait] = value
    for name in set(sys.modules) - kernel_modules:
        del sys.modules[name]  # the pool's own imports: not a fresh kernel's
    forget_shipped()
    sys.argv[:] = ["-m"] + argv[3:]
    if request.get("iopub_hwm"):
        queue_iopub(int(request["iopub_hwm"]))
    runpy._run_module_as_main(argv[2])  # what -m does: argv[0], __main__'s spec and file


#: What every kernel imports while it initialises (ipykernel 6-7: IPKernelApp.initialize), after
#: ipykernel_launcher's own import and before it answers: done once in the pool instead. None of
#: them starts a thread, a loop or a ZeroMQ context on import (checked: main() refuses to serve
#: otherwise); a kernel has all of them in sys.modules by its first cell either way.
INIT_IMPORTS = ("argcomplete", "pdb", "IPython.core.debugger", "tornado.platform.asyncio", "faulthandler",
                "ipykernel.debugger", "IPython.core.oinspect", "sqlite3", "IPython.core.completerlib")


def preimport() -> None:
    import importlib

    for name in INIT_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the kernel imports it itself (and reports what fails)
            pass


def take_lock(socket_path: str) -> int:
    """The pool's lock file, locked (one pool per socket); -1 if another pool has it. Taken
    before the imports: keepers see a pool that is starting (remote/warm.py: pool_starting)."""
    import fcntl

    fd = os.open(socket_path[: -len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return -1
    return fd


def main() -> None:
    """The pool's life (remote/loader.py's ``run`` calls it); in a forked child, the kernel's."""
    # json and fcntl (subprocess's) are imported by ipykernel anyway.
    import json

    params = json.loads(sys.stdin.buffer.readline().decode("utf-8"))  # the line after the program
    # Daemonised first: the keeper that starts the pool waits for this first process only.
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    lock_fd = take_lock(params["socket"])
    if lock_fd < 0:
        return  # another pool serves (or is about to serve) this configuration
    show_command_line(params.get("title", ["ssh_ipykernel-warm-pool"]))
    # As -m does (-c put '' there): the kernel's sys.path[0] is its working directory.
    if sys.path and sys.path[0] == "":
        sys.path[0] = os.getcwd()
    import threading

    environ = dict(os.environ)
    import ipykernel.kernelapp  # noqa: F401 - the work a kernel's start does not repeat

    preimport()
    kernel_modules = set(sys.modules) | {"runpy"}
    # What the imports did to the environment (debugpy sets PYDEVD_USE_FRAME_EVAL): a kernel's
    # own imports would have done it to its environment.
    set_by_imports = {k: v for k, v in os.environ.items() if environ.get(k) != v}
    unset_by_imports = [k for k in environ if k not in os.environ]
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        os.write(2, b"ssh_ipykernel warm pool: importing ipykernel started a thread; no warm kernels here\n")
        return
    pool = Pool(params, lock_fd)
    pool.claim()
    pool.log("serving %s" % pool.socket_path)
    request = pool.serve()
    if request is not None:
        become_kernel(request, kernel_modules | _BASELINE, set_by_imports, unset_by_imports)
