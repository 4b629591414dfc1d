"""The session client: one remote kernel, reached through SSH sessions to its keeper.

Lifecycle (who calls what, and when), in the spirit of jupyter_client's provisioners:

* ``start(timeout)`` — the proxy, once, after connecting: runs the agent in mode ``start``
  (connection file, keeper, kernel) and returns its ``ready`` report.
* ``watch(connection_file, timeout)`` — ``ssh-ipykernel connect``, once: a kernel somebody
  else started (mode ``watch``).
* ``attach(transport, timeout)`` — the supervisor, after a lost connection, over the new
  transport (and ``connect``, to reach a watched kernel's keeper): the same kernel again.
* ``filenos()`` / ``read(fd)`` — the supervisor's select loop: register the session's
  descriptors, and get what arrived on one as parsed events and stderr text (``Readout``).
* ``ping()``, ``interrupt()``, ``request_shutdown()``, ``detach()`` — the supervisor, on its
  timers and signals: commands to the keeper (protocol.Op); False if the session is gone.
* ``stop(timeout)`` — the proxy, when start-up fails after the kernel exists: shut it down
  and wait for ``exited`` (a kernel nobody used must not wait out a grace period).
* ``close()`` — everyone, whenever: end the current session, never the kernel. Safe twice.

Nothing outside this module touches the session's process, pipes or event reader.
"""
from __future__ import annotations

import logging
import os
import selectors
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from .. import exceptions as exc
from ..remote.protocol import AgentParams, Event, Op, op_line
from ..remote_errors import error_for_exit
from ..transport.base import Transport, end_process
from .bundle import agent_stdin
from .events import EventReader
from .startcmd import StartCommand, start_command

if TYPE_CHECKING:
    from ..options import LaunchOptions

log = logging.getLogger(__name__)

#: stderr chunks kept for the error message of a failed session.
STDERR_TAIL = 20


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
    warm: bool = False  # forked by the host's warm pool (remote/warm.py)
    warm_pool: str = ""  # that pool's socket on the remote (also when the pool was started for it)
    agent_server: str = ""  # the agent server for this kernel's restarts (remote/agentserver.py), if any
    restarted_direct: bool = False  # this start went to the agent server of the kernel's last start

    @classmethod
    def from_event(cls, event: Dict[str, object]) -> "KernelInfo":
        """From a checked ``ready`` event (protocol.check_event)."""
        ports: Dict[str, int] = event["ports"]  # type: ignore[assignment]
        return cls(
            pid=int(event["pid"] or 0),  # type: ignore[call-overload]
            ports=dict(ports),
            hostname=str(event.get("hostname", "")),
            python=str(event.get("python", "")),
            python_version=str(event.get("python_version", "")),
            ipykernel_version=str(event.get("ipykernel_version", "")),
            connection_file=str(event.get("connection_file", "")),
            socket=str(event.get("socket", "")),
            kernel_id=str(event.get("kernel_id", "")),
            warm=event.get("warm") is True,
            warm_pool=str(event.get("warm_pool") or ""),
            agent_server=str(event.get("agent_server") or ""),
        )


@dataclass
class Readout:
    """What ``RemoteKernel.read(fd)`` found on one of the session's descriptors."""

    events: List[Dict[str, object]] = field(default_factory=list)  # checked keeper events, oldest first
    stderr: str = ""  # the session's own error output (not the kernel's log: that is a ``log`` event)
    heard: bool = False  # bytes arrived from the keeper: the connection is alive
    closed: bool = False  # this descriptor reached end of file: stop selecting on it
    ended: bool = False  # the keeper's stream ended: the session is over


class RemoteKernel:
    """One remote kernel, reached through SSH sessions to its keeper (see remote/keeper.py).

    ``close()`` only ends the current session (the kernel stays for its grace period);
    ``stop()`` shuts the kernel down first. See the module docstring for the lifecycle.
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
        launch: Optional["LaunchOptions"] = None,
        command: Optional[StartCommand] = None,
        serve: bool = False,
        agent_server: str = "",
    ) -> None:
        self.transport = transport
        self.python = python
        self.kernel_id = kernel_id
        self.pre_command = launch.pre_command if launch is not None else None
        #: How the remote starts the agent; a batch scheduler's StartCommand goes here.
        self.command = command or start_command(sudo=sudo, pre_command=self.pre_command)
        self.params = AgentParams.start(
            kernel_id=kernel_id, key=key, signature_scheme=signature_scheme, kernel_name=kernel_name,
            env=dict(env or {}), grace=grace, client_timeout=client_timeout,
            **(launch.params() if launch is not None else {}), serve=serve,
        )
        #: The agent server of this kernel's last start (a restart: agentserver.py), tried first.
        self.agent_server = agent_server
        #: The kernel's last ``ready`` report (None before start/watch).
        self.info: Optional[KernelInfo] = None
        #: The last ``ready`` event, as received (``connect`` reads the key and ip from it).
        self.ready_event: Dict[str, object] = {}
        self._proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self._reader: Optional[EventReader] = None
        self._stderr_tail: List[str] = []
        #: Re-attach over a direct stream to the keeper's socket (transport.open_unix_stream),
        #: until the server turns out to refuse those.
        self.direct = True
        #: Whether the last attach() went that way (for the log).
        self.attached_directly = False

    @property
    def host(self) -> str:
        """The host's label, for messages."""
        return self.transport.host.label

    @property
    def host_spec(self) -> str:
        """The host as the user wrote it (for a ``--host`` in advice)."""
        return self.transport.host.spec

    @property
    def stderr_tail(self) -> str:
        """The last of the current session's stderr."""
        return "".join(self._stderr_tail)

    # -- opening sessions ---------------------------------------------------------------------------
    def start(self, timeout: float) -> KernelInfo:
        """Run the agent and wait for its ``ready`` report; raise a RemoteError subclass if not.
        A restart asks the agent server of the kernel's last start first (no remote process)."""
        info = self._open_server(timeout) if self.agent_server and self.direct else None
        self.info = info or self._open(self.params, timeout)
        return self.info

    def _open_server(self, timeout: float) -> Optional[KernelInfo]:
        """The agent as a fork of the agent server at ``self.agent_server`` (reached like a
        keeper: a direct stream), given our parameters; None if there is none (it ended, the
        host or the server refused): the caller then starts an agent session."""
        t0 = time.monotonic()
        proc = self.transport.open_unix_stream(self.agent_server, timeout)
        if proc is None:
            return None
        self._stderr_tail = []
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self._reader = EventReader(proc.stdout.fileno())
        try:
            proc.stdin.write((self.params.to_json() + "\n").encode("utf-8"))
            proc.stdin.flush()
            event = self._wait_ready(timeout)
        except OSError as e:  # (not its silence: a kernel that does not come would not come either way)
            log.debug("the agent server %s did not start the kernel: %s", self.agent_server, e)
            event = None
        if event is None or event.get("event") != Event.READY:
            # Its error (if any) comes again, with its advice, from the usual start.
            log.debug("the agent server %s answered %s; starting an agent", self.agent_server, event)
            self.close()
            return None
        log.debug("started through the agent server %s in %.3f s", self.agent_server, time.monotonic() - t0)
        self.ready_event = event
        info = KernelInfo.from_event(event)
        info.restarted_direct = True
        return info

    def watch(self, connection_file: str, timeout: float) -> Dict[str, object]:
        """Open a session that reads a kernel's remote connection file (key included) and
        answers pings: for kernels started by somebody else. Returns the ``ready`` event."""
        self.info = self._open(AgentParams.watch(kernel_id=self.kernel_id, connection_file=connection_file), timeout)
        return self.ready_event

    def attach(self, transport: Transport, timeout: float) -> KernelInfo:
        """Reach the running kernel again over ``transport`` (a new connection): through its
        keeper if it has one, else by watching its connection file again.

        Raises KernelGoneError if the kernel is gone, another RemoteError if the session fails.
        """
        assert self.info is not None, "attach() before start()"
        self.close()
        self.transport = transport
        info = self._open_direct(timeout) if self.info.socket and self.direct else None
        self.attached_directly = info is not None
        if info is None:
            if self.info.socket:
                params = AgentParams.attach(kernel_id=self.kernel_id, socket=self.info.socket)
            else:
                params = AgentParams.watch(kernel_id=self.kernel_id, connection_file=self.info.connection_file)
            info = self._open(params, timeout)
            if self.info.socket and self.direct:
                # The keeper is there, but the direct stream to it failed: the server does not
                # allow streamlocal forwarding. Not asked again by this proxy.
                log.info("%s does not forward unix sockets (AllowStreamLocalForwarding); re-attaching "
                         "through a remote python from now on", self.host)
                self.direct = False
        if (self.info.pid and info.pid != self.info.pid) or info.ports != self.info.ports:
            self.close()
            msg = (f"the kernel at {self.info.socket or self.info.connection_file} on {self.host} is "
                   f"another one now (pid {info.pid}, ports {info.ports})")
            raise exc.KernelGoneError(msg, host=self.host)
        self.info = info
        return info

    def _open_direct(self, timeout: float) -> Optional[KernelInfo]:
        """The keeper's socket reached by the transport itself (a direct-streamlocal channel:
        transport/streamlocal.py), the keeper's greeting read: no remote process, one round
        trip. None if that is not possible; the caller then starts a relay."""
        assert self.info is not None
        t0 = time.monotonic()
        proc = self.transport.open_unix_stream(self.info.socket, timeout)
        if proc is None:
            return None
        self._stderr_tail = []
        self._proc = proc
        assert proc.stdout is not None
        self._reader = EventReader(proc.stdout.fileno())
        try:
            event = self._wait_ready(timeout)
        except exc.KernelStartError:
            event = None
        if event is None or event.get("event") != Event.READY:
            self.close()
            return None
        log.debug("attached to %s directly in %.3f s", self.info.socket, time.monotonic() - t0)
        self.ready_event = event
        return KernelInfo.from_event(event)

    def open_stream(self, timeout: float) -> "subprocess.Popen[bytes]":
        """Another session to the kernel's keeper, for its channels (channels.py): direct when
        the server allows it, else through a remote python's relay. The keeper's greeting is
        read; what follows belongs to the caller. Raises RemoteError if the keeper is not there."""
        assert self.info is not None and self.info.socket, "open_stream() without a keeper"
        proc = self.transport.open_unix_stream(self.info.socket, timeout) if self.direct else None
        if proc is None:
            proc = self.transport.start_command(self.command.build(self.python))
            assert proc.stdin is not None
            try:
                proc.stdin.write(agent_stdin(AgentParams.attach(kernel_id=self.kernel_id, socket=self.info.socket)))
                proc.stdin.flush()
            except BrokenPipeError:
                pass
        assert proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not line.endswith(b"\n"):  # the greeting, a byte at a time: what follows is not ours
                remaining = deadline - time.monotonic()
                byte = os.read(fd, 1) if remaining > 0 and sel.select(remaining) else b""
                if not byte:
                    end_process(proc)
                    raise exc.RemoteError(f"no stream to the kernel's keeper on {self.host}",
                                          host=self.host, detail=line.decode("utf-8", "replace")[-300:])
                line += byte
        return proc

    def _open(self, params: AgentParams, timeout: float) -> KernelInfo:
        self._stderr_tail = []
        proc = self._proc = self.transport.start_command(self.command.build(self.python))
        assert proc.stdin and proc.stdout and proc.stderr
        self._reader = EventReader(proc.stdout.fileno())
        try:
            proc.stdin.write(agent_stdin(params))
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # the session already ended; its exit code and stderr tell why below
        event = self._wait_ready(timeout)
        if event is None or event.get("event") != Event.READY:
            returncode = self._wait_exit(5.0)
            raise error_for_exit(returncode, self.stderr_tail, host=self.host, python=self.python, event=event,
                                 pre_command=self.pre_command)
        self.ready_event = event
        return KernelInfo.from_event(event)

    #: While a session opens: what each event means (True: the answer; None: leave it pending
    #: and stop, for the caller's loop; absent: consumed and ignored).
    _OPENING: Dict[str, Optional[bool]] = {Event.READY: True, Event.ERROR: True, Event.EXITED: None}

    def _wait_ready(self, timeout: float) -> Optional[Dict[str, object]]:
        assert self._proc and self._proc.stderr and self._reader
        deadline = time.monotonic() + timeout
        reader = self._reader
        with selectors.DefaultSelector() as sel:
            sel.register(reader.fd, selectors.EVENT_READ, "out")
            sel.register(self._proc.stderr.fileno(), selectors.EVENT_READ, "err")
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = (
                        f"the kernel on {self.host} did not report ready within {timeout:.0f} s; "
                        f"raise --timeout if the remote host is slow"
                    )
                    raise exc.KernelStartError(msg, host=self.host, detail=self.stderr_tail)
                for key, _ in sel.select(remaining):
                    if key.data == "err":
                        if self._read_stderr(key.fd) is None:
                            sel.unregister(key.fd)
                        continue
                    eof = reader.read()
                    while reader.pending:
                        event = reader.pending[0]
                        outcome = self._OPENING.get(str(event.get("event")), False)
                        if outcome is True:
                            return reader.pending.pop(0)
                        if outcome is None:
                            return None  # left pending: the caller's loop reports it
                        reader.pending.pop(0)
                    if eof:
                        sel.unregister(key.fd)
        return None

    def _read_stderr(self, fd: int) -> Optional[str]:
        """Read the session's stderr: the text (kept in the tail), or None at end of file."""
        data = os.read(fd, 65536)
        if not data:
            return None
        text = data.decode("utf-8", "replace")
        self._stderr_tail.append(text)
        del self._stderr_tail[:-STDERR_TAIL]
        return text

    def _wait_exit(self, timeout: float) -> Optional[int]:
        assert self._proc
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- the running session (the supervisor's loop) ------------------------------------------------
    def filenos(self) -> List[int]:
        """The descriptors to select on for reading while the session runs ([] if none)."""
        if self._proc is None or self._reader is None or self._proc.stderr is None:
            return []
        return [self._reader.fd, self._proc.stderr.fileno()]

    def read(self, fd: int) -> Readout:
        """Read what arrived on ``fd`` (one of ``filenos()``, reported readable)."""
        assert self._proc is not None and self._reader is not None
        if fd != self._reader.fd:
            text = self._read_stderr(fd)
            return Readout(stderr=text or "", closed=text is None)
        ended = self._reader.read()
        return Readout(events=self._reader.take(), heard=not ended, closed=ended, ended=ended)

    def take_events(self) -> List[Dict[str, object]]:
        """Events that arrived but were not consumed yet (e.g. an ``exited`` right after ready)."""
        return self._reader.take() if self._reader is not None else []

    def exited_meanwhile(self, timeout: float) -> bool:
        """Whether the keeper says (within ``timeout``) that the kernel has ended; the event
        stays pending for the caller's loop (take_events)."""
        reader = self._reader
        if reader is None:
            return False
        is_exit: Callable[[Dict[str, object]], bool] = lambda e: e.get("event") == Event.EXITED  # noqa: E731
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(reader.fd, selectors.EVENT_READ)
            while not any(is_exit(e) for e in reader.pending):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining) or reader.read():
                    break
        return any(is_exit(e) for e in reader.pending)

    # -- commands -----------------------------------------------------------------------------------
    def send(self, op: str, **fields: object) -> bool:
        """Send a command (protocol.Op) to the keeper; False if the session is gone."""
        if self._proc is None or self._proc.stdin is None:
            return False
        try:
            self._proc.stdin.write(op_line(op, **fields))
            self._proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def ping(self) -> bool:
        return self.send(Op.PING)

    def interrupt(self) -> bool:
        return self.send(Op.INTERRUPT)

    def request_shutdown(self) -> bool:
        return self.send(Op.SHUTDOWN)

    def detach(self) -> bool:
        return self.send(Op.DETACH)

    # -- ending -------------------------------------------------------------------------------------
    def stop(self, timeout: float) -> Optional[Dict[str, object]]:
        """Shut the kernel down and wait (up to ``timeout``) for its ``exited`` event; then close.

        For the paths where the proxy gives up after starting a kernel (a failed forward, a
        stop signal during start-up): the kernel must not wait out a grace period for nobody.
        """
        exited = None
        reader = self._reader
        if self._proc is not None and reader is not None and self.request_shutdown() \
                and self.exited_meanwhile(timeout):
            exited = next(e for e in reader.pending if e.get("event") == Event.EXITED)
        self.close()
        return exited

    def close(self) -> None:
        """End the current session (not the kernel). Safe to call twice."""
        proc, self._proc = self._proc, None
        self._reader = None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        end_process(proc)
