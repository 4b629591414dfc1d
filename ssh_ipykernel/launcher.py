"""Local side of the remote agent: build its command, ship it, read its events.

The only things on the remote command line are a fixed POSIX sh wrapper, the shell-quoted python
path and a fixed one-line loader. Everything else (the agent's source, the session key, the
environment) goes over the session's stdin as data.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import selectors
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from . import exceptions as exc
from .options import LaunchOptions
from .remote import protocol
from .remote_errors import error_for_exit
from .transport.base import Transport, end_process

log = logging.getLogger(__name__)

# Runs first on the remote: refuse Python < 3.8 with a sentinel code, then read exactly the
# announced number of bytes of agent source from stdin and run it as __main__. No single quotes:
# it travels inside single quotes.
LOADER = (
    "import sys;sys.version_info<(3,8) and sys.exit(%d);b=sys.stdin.buffer;"
    'exec(compile(b.read(int(b.readline())),"ssh_ipykernel-agent","exec"))'
) % protocol.EXIT_PYTHON_TOO_OLD

# Resolves --python on the remote: an interpreter path, an environment prefix (prefix/bin/python)
# or a command name on the remote PATH (only an executable file counts: not a shell keyword,
# alias or function). $N and $P are only ever expanded inside double quotes.
_WRAPPER = (
    '{pre}N={python}; P="$N"; '
    'case "$P" in */*) ;; *) P=$(command -v "$P" 2>/dev/null) || P=;; esac; '
    'case "$P" in */*) ;; *) P=/nonexistent;; esac; '
    'if [ -d "$P" ]; then P="$P/bin/python"; fi; '
    'if [ ! -x "$P" ] || [ -d "$P" ]; then {notfound}; fi; '
    'exec {sudo}"$P" -c {loader}'
)
_NOT_FOUND = 'echo "ssh_ipykernel: python not found: $N" >&2; exit %d' % protocol.EXIT_PYTHON_NOT_FOUND
SUDO_PREFIX = "sudo -n -- "
# --pre-command: the user's own command line, run by their login shell before anything else so
# that it can change the environment python starts in (activate a conda env, `module load`).
# It arrives as ONE single-quoted word that eval parses on its own: whatever it holds cannot
# reach into the wrapper around it. `command eval`: in POSIX shells a failing special builtin
# (`. missing-file`, a syntax error) would otherwise end the whole shell before we can say so;
# zsh's `command` means "external command", its `builtin` is the same thing. stdin is
# /dev/null (the agent's source follows on ours), stdout goes to stderr (ours carries events).
_PRE = (
    '_sik_e=command; [ -n "$ZSH_VERSION" ] && _sik_e=builtin; '
    '$_sik_e eval {command} </dev/null >&2 || {{ echo "ssh_ipykernel: the pre-command failed with '
    'exit code $?" >&2; exit %d; }}; '
) % protocol.EXIT_PRE_COMMAND


def sh_quote(text: str) -> str:
    """One single-quoted word for any POSIX shell and zsh, always quoted: ``shlex.quote`` leaves
    words like ``=0`` bare, and zsh expands a leading ``=`` (``=cmd`` is the path of cmd)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def quote_remote_path(path: str) -> str:
    """Quote a path for the remote sh, keeping a leading ``~/`` meaning the remote home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + sh_quote(path[2:])
    return sh_quote(path)


def build_remote_command(python: Optional[str], *, sudo: bool = False, pre_command: Optional[str] = None) -> str:
    """The command string the remote login shell runs (see module docstring for what it holds)."""
    return _WRAPPER.format(
        pre=_PRE.format(command=sh_quote(pre_command)) if pre_command else "",
        python=quote_remote_path(python or "python3"),
        notfound=_NOT_FOUND,
        sudo=SUDO_PREFIX if sudo else "",
        loader=sh_quote(LOADER),
    )


#: The remote agent's modules, in the order they are joined into the shipped source.
REMOTE_MODULES = ("protocol", "kernelcmd", "agent", "keeper", "bootstrap")
LOCAL_ONLY = "# local-only"
_FUTURE = "from __future__ import annotations"


@functools.lru_cache(maxsize=4)
def bundle_source(modules: Tuple[str, ...]) -> bytes:
    """Modules of ``ssh_ipykernel.remote`` as one source text, sharing one namespace.

    Their imports of each other end in ``# local-only`` and are dropped, as is each module's
    ``from __future__`` line (only legal at the very top, so it is put there once).
    """
    directory = os.path.dirname(protocol.__file__)
    parts = [_FUTURE]
    for name in modules:
        with open(os.path.join(directory, f"{name}.py"), encoding="utf-8") as f:
            lines = f.read().splitlines()
        parts += [line for line in lines if line != _FUTURE and not line.rstrip().endswith(LOCAL_ONLY)]
    return ("\n".join(parts) + "\n").encode("utf-8")


def agent_source() -> bytes:
    """The remote agent as one source text (see bundle_source)."""
    return bundle_source(REMOTE_MODULES)


def agent_stdin(params: Dict[str, object], source: Optional[bytes] = None) -> bytes:
    """What we write to the session's stdin before any command: length, source, parameters."""
    source = agent_source() if source is None else source
    return b"%d\n" % len(source) + source + (json.dumps(params) + "\n").encode("utf-8")


@dataclass
class KernelInfo:
    """What the agent reports once the remote kernel process is running."""

    pid: int
    ports: Dict[str, int]
    hostname: str = ""
    python: str = ""
    python_version: str = ""
    ipykernel_version: str = ""
    connection_file: str = ""
    socket: str = ""
    kernel_id: str = ""


class RemoteKernel:
    """One remote kernel, reached through SSH sessions to its keeper (see remote/keeper.py).

    ``start()`` opens the first session, which launches the kernel; after a lost connection
    ``attach()`` opens a new one to the same kernel. ``close()`` only ends the current session
    (the kernel stays for its grace period); ``stop()`` shuts the kernel down first.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        kernel_id: str,
        key: str,
        signature_scheme: str,
        kernel_name: str = "",
        python: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        sudo: bool = False,
        grace: Optional[float] = None,
        client_timeout: Optional[float] = None,
        launch: Optional[LaunchOptions] = None,
    ) -> None:
        self.transport = transport
        self.python = python
        self.sudo = sudo
        self.launch = launch or LaunchOptions()
        self.params: Dict[str, object] = {
            "protocol": protocol.PROTOCOL,
            "mode": "start",
            "kernel_id": kernel_id,
            "key": key,
            "signature_scheme": signature_scheme,
            "kernel_name": kernel_name,
            "env": dict(env or {}),
            "grace": grace,
            "client_timeout": client_timeout,
            **self.launch.params(),
        }
        self.proc: Optional[subprocess.Popen] = None
        self.info: Optional[KernelInfo] = None
        self.stderr_tail: List[str] = []
        self.reader: Optional[EventReader] = None
        self.ready_event: Dict[str, object] = {}  # the last ``ready`` event, as received

    @property
    def host(self) -> str:
        return self.transport.host.label

    def start(self, timeout: float) -> KernelInfo:
        """Run the agent and wait for its ``ready`` report; raise a RemoteError subclass if not."""
        self.info = self._open(self.params, timeout)
        return self.info

    def watch(self, connection_file: str, timeout: float) -> Dict[str, object]:
        """Open a session that reads a kernel's remote connection file (key included) and
        answers pings: for kernels started by somebody else. Returns the ``ready`` event."""
        params = {"protocol": protocol.PROTOCOL, "mode": "watch", "kernel_id": self.params["kernel_id"],
                  "connection_file": connection_file}
        self.info = self._open(params, timeout)
        return self.ready_event

    def attach(self, transport: Transport, timeout: float) -> KernelInfo:
        """Reach the running kernel again over ``transport`` (a new connection): through its
        keeper if it has one, else by watching its connection file again.

        Raises KernelGoneError if the kernel is gone, another RemoteError if the session fails.
        """
        assert self.info is not None, "attach() before start()"
        self.close()
        self.transport = transport
        if self.info.socket:
            params = {"protocol": protocol.PROTOCOL, "mode": "attach", "kernel_id": self.params["kernel_id"],
                      "socket": self.info.socket}
        else:
            params = {"protocol": protocol.PROTOCOL, "mode": "watch", "kernel_id": self.params["kernel_id"],
                      "connection_file": self.info.connection_file}
        info = self._open(params, timeout)
        if (self.info.pid and info.pid != self.info.pid) or info.ports != self.info.ports:
            self.close()
            msg = (f"the kernel at {self.info.socket or self.info.connection_file} on {self.host} is "
                   f"another one now (pid {info.pid}, ports {info.ports})")
            raise exc.KernelGoneError(msg, host=self.host)
        self.info = info
        return info

    def _open(self, params: Dict[str, object], timeout: float) -> KernelInfo:
        command = build_remote_command(self.python, sudo=self.sudo, pre_command=self.launch.pre_command)
        self.stderr_tail = []
        self.proc = self.transport.start_command(command)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        try:
            self.proc.stdin.write(agent_stdin(params))
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the session already ended; its exit code and stderr tell why below
        event = self._wait_ready(timeout)
        if event is None or event.get("event") != "ready":
            returncode = self._wait_exit(5.0)
            stderr = "".join(self.stderr_tail)
            raise error_for_exit(returncode, stderr, host=self.host, python=self.python, event=event,
                                 pre_command=self.launch.pre_command)
        self.ready_event = event
        ports = event.get("ports") or {}
        return KernelInfo(
            pid=int(event["pid"]),  # type: ignore[arg-type]
            ports={k: int(v) for k, v in ports.items()},  # type: ignore[union-attr]
            hostname=str(event.get("hostname", "")),
            python=str(event.get("python", "")),
            python_version=str(event.get("python_version", "")),
            ipykernel_version=str(event.get("ipykernel_version", "")),
            connection_file=str(event.get("connection_file", "")),
            socket=str(event.get("socket", "")),
            kernel_id=str(event.get("kernel_id", "")),
        )

    def _wait_ready(self, timeout: float) -> Optional[Dict[str, object]]:
        assert self.proc and self.proc.stdout and self.proc.stderr
        deadline = time.monotonic() + timeout
        reader = self.reader = EventReader(self.proc.stdout.fileno())
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ, "out")
            sel.register(self.proc.stderr, selectors.EVENT_READ, "err")
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = (
                        f"the kernel on {self.host} did not report ready within {timeout:.0f} s; "
                        f"raise --timeout if the remote host is slow"
                    )
                    raise exc.KernelStartError(msg, host=self.host, detail="".join(self.stderr_tail))
                for key, _ in sel.select(remaining):
                    if key.data == "err":
                        data = os.read(key.fd, 65536)
                        if not data:
                            sel.unregister(key.fileobj)
                        else:
                            self._keep_stderr(data)
                        continue
                    eof = reader.read()
                    while reader.pending:
                        event = reader.pending[0]
                        if event.get("event") in ("ready", "error"):
                            reader.pending.pop(0)
                            return event
                        if event.get("event") == "exited":
                            return None  # left pending: the caller's loop reports it
                        reader.pending.pop(0)
                    if eof:
                        sel.unregister(key.fileobj)
        return None

    def _keep_stderr(self, data: bytes) -> None:
        self.stderr_tail.append(data.decode("utf-8", "replace"))
        del self.stderr_tail[:-20]

    def _wait_exit(self, timeout: float) -> Optional[int]:
        assert self.proc
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def send(self, op: str) -> bool:
        """Send a command to the keeper; False if the session is gone."""
        if self.proc is None or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write((json.dumps({"op": op}) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def interrupt(self) -> bool:
        return self.send("interrupt")

    def request_shutdown(self) -> bool:
        return self.send("shutdown")

    def stop(self, timeout: float) -> Optional[Dict[str, object]]:
        """Shut the kernel down and wait (up to ``timeout``) for its ``exited`` event; then close.

        For the paths where the proxy gives up after starting a kernel (a failed forward, a
        stop signal during start-up): the kernel must not wait out a grace period for nobody.
        """
        exited = None
        if self.proc is not None and self.reader is None and self.proc.stdout is not None:
            self.reader = EventReader(self.proc.stdout.fileno())
        if self.proc is not None and self.reader is not None and self.request_shutdown():
            deadline = time.monotonic() + timeout
            with selectors.DefaultSelector() as sel:
                sel.register(self.reader.fd, selectors.EVENT_READ)
                while exited is None and time.monotonic() < deadline:
                    exited = next((e for e in self.reader.pending if e.get("event") == "exited"), None)
                    if exited is not None or not sel.select(deadline - time.monotonic()):
                        break
                    if self.reader.read():
                        exited = next((e for e in self.reader.pending if e.get("event") == "exited"), None)
                        break
        self.close()
        return exited

    def close(self) -> None:
        """End the current session (not the kernel). Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        end_process(proc)


class EventReader:
    """Split a pipe's bytes into JSON event lines without mixing buffered and raw reads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        #: Events read but not yet consumed, oldest first.
        self.pending: List[Dict[str, object]] = []

    def read(self) -> bool:
        """Read what is available into ``pending``; return True at end of file."""
        data = os.read(self.fd, 65536)
        if not data:
            return True
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line.decode("utf-8"))
            except ValueError:
                log.warning("unexpected output from the remote agent: %r", line[:200])
                continue
            if isinstance(event, dict):
                self.pending.append(event)
        return False
