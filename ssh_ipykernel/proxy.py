"""The local proxy: lives exactly as long as the remote kernel.

Start-up is connect -> launch -> forward, each logged with its time. Then one select() loop
waits on the agent's events, the agent's stderr (the kernel's log), the ssh master's pty and
the signal wakeup socket:

* SIGINT -> interrupt the remote kernel (its state is kept);
* SIGTERM / SIGHUP -> ask the agent to shut the kernel down cleanly, then exit;
* the agent reports the kernel exited -> exit 0 if it exited cleanly (a shutdown or restart
  Jupyter asked for), non-zero otherwise so that Jupyter's restarter replaces it.
"""
from __future__ import annotations

import logging
import os
import re
import selectors
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from . import exceptions as exc
from .connection import kernel_id_from_path, load_connection_file
from .hosts import parse_host
from .launcher import LaunchOptions, RemoteKernel
from .log import KernelLogAdapter, redact, redact_text
from .signals import SignalRelay
from .transport import TransportOptions, create_transport
from .tunnels import Tunnels, plan_forwards

logger = logging.getLogger(__name__)

_OPEN_FAILED_RE = re.compile(r"channel \d+: open failed: connect failed")
#: How long the agent gets to shut the kernel down after SIGTERM before we cut the session.
SHUTDOWN_TIMEOUT = 10.0
#: The proxy tells the agent it is alive this often ...
KEEPALIVE_INTERVAL = 10.0
#: ... and the agent ends the kernel after this much silence (a cut link gives no EOF there).
DEFAULT_KEEPALIVE_TIMEOUT = 90.0


@dataclass
class ProxyOptions:
    """Everything the proxy CLI accepts."""

    host: str
    connection_file: str
    python: Optional[str] = None
    ssh_config: Optional[str] = None
    timeout: float = 30.0
    env: Dict[str, str] = field(default_factory=dict)
    sudo: bool = False
    transport: str = "openssh"
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    launch: LaunchOptions = field(default_factory=LaunchOptions)  # --remote-kernel, --workdir, ...


class Proxy:
    """Run one remote kernel for one local connection file."""

    def __init__(self, options: ProxyOptions) -> None:
        self.options = options
        self.hostspec = parse_host(options.host)
        self.kernel_id = kernel_id_from_path(options.connection_file)
        self.log = KernelLogAdapter(logger, {"host": self.hostspec.label, "kernel": self.kernel_id})

    def run(self) -> int:
        """Start the kernel and serve it; return the process exit code."""
        info = load_connection_file(self.options.connection_file)
        redact(info["key"])
        self._key = info["key"]
        t0 = time.monotonic()
        transport_options = TransportOptions(
            ssh_config=self.options.ssh_config,
            connect_timeout=self.options.timeout,
            verbose=logger.isEnabledFor(logging.DEBUG),
        )
        with SignalRelay() as signals, create_transport(
            self.options.transport, self.hostspec, transport_options, name=self.kernel_id
        ) as transport:
            self.log.info("connecting to %s", self.hostspec.spec)
            transport.connect()
            t1 = time.monotonic()
            self.log.info("connected in %.2f s", t1 - t0)
            kernel = RemoteKernel(
                transport,
                kernel_id=self.kernel_id,
                key=info["key"],
                signature_scheme=info["signature_scheme"],
                kernel_name=info["kernel_name"],
                python=self.options.python,
                env=forwarded_env(os.environ, self.options.env),
                sudo=self.options.sudo,
                proxy_timeout=self.options.keepalive_timeout,
            )
            try:
                self.log.info("launching kernel with %s", self.options.python or "python3 (remote PATH)")
                ready = kernel.start(self.options.timeout)
                t2 = time.monotonic()
                self.log.info(
                    "kernel pid %d on %s (%s, Python %s, ipykernel %s) launched in %.2f s",
                    ready.pid, ready.hostname, ready.python, ready.python_version,
                    ready.ipykernel_version, t2 - t1,
                )
                tunnels = Tunnels(transport, plan_forwards(info, ready.ports))
                with tunnels:
                    t3 = time.monotonic()
                    self.log.info("tunnels up in %.3f s; ready %.2f s after start", t3 - t2, t3 - t0)
                    signals.raise_on_stop = False
                    # A SIGINT that came while the kernel was booting would kill it, not
                    # interrupt a cell; a stop that slipped in after start-up still counts.
                    early = signals.pending()
                    if signal.SIGINT in early:
                        self.log.info("interrupt during start-up ignored")
                    stop = any(signum != signal.SIGINT for signum in early)
                    return self._serve(kernel, transport, signals, stop=stop)
            finally:
                kernel.close()

    def _serve(self, kernel: RemoteKernel, transport, signals: SignalRelay, *, stop: bool) -> int:  # noqa: ANN001
        assert kernel.proc and kernel.proc.stderr and kernel.reader
        reader = kernel.reader
        shutdown_deadline: Optional[float] = None
        if stop:
            kernel.request_shutdown()
            shutdown_deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        sel = selectors.DefaultSelector()
        sel.register(signals.fileno(), selectors.EVENT_READ, "signal")
        sel.register(reader.fd, selectors.EVENT_READ, "events")
        sel.register(kernel.proc.stderr.fileno(), selectors.EVENT_READ, "stderr")
        master_fd = transport.fileno()
        if master_fd is not None:
            sel.register(master_fd, selectors.EVENT_READ, "master")
        next_keepalive = time.monotonic() + KEEPALIVE_INTERVAL
        try:
            while True:
                code = self._handle_events(reader.pending)
                if code is not None:
                    return code
                now = time.monotonic()
                if shutdown_deadline is not None and now >= shutdown_deadline:
                    self.log.warning("the kernel did not shut down in %.0f s; closing the connection", SHUTDOWN_TIMEOUT)
                    return 0
                if now >= next_keepalive:
                    kernel.send("keepalive")
                    next_keepalive = now + KEEPALIVE_INTERVAL
                wake = next_keepalive if shutdown_deadline is None else min(next_keepalive, shutdown_deadline)
                ready = sel.select(max(0.0, wake - now))
                for key, _ in ready:
                    if key.data == "signal":
                        for signum in signals.pending():
                            if signum == signal.SIGINT:
                                self.log.info("interrupting the kernel")
                                kernel.interrupt()
                            elif shutdown_deadline is None:
                                self.log.info("%s: shutting the kernel down", signal.Signals(signum).name)
                                kernel.request_shutdown()
                                shutdown_deadline = time.monotonic() + SHUTDOWN_TIMEOUT
                    elif key.data == "stderr":
                        data = os.read(key.fd, 65536)
                        if data:
                            _relay_remote_output(data, self._key)
                        else:
                            sel.unregister(key.fd)
                    elif key.data == "master":
                        self._log_ssh_output(transport.drain())
                        if not transport.alive():
                            sel.unregister(key.fd)
                    elif key.data == "events":
                        if reader.read():
                            sel.unregister(key.fd)
                            code = self._handle_events(reader.pending)
                            if code is not None:
                                return code
                            if shutdown_deadline is not None:
                                return 0
                            detail = transport.drain() + "".join(kernel.stderr_tail)
                            raise exc.ConnectionLostError(
                                f"lost the connection to {self.hostspec.label}; the remote kernel is "
                                f"shut down by its agent, and Jupyter will start a new one",
                                host=self.hostspec.label, detail=detail,
                            )
        finally:
            sel.close()

    def _log_ssh_output(self, text: str) -> None:
        for line in text.replace("\r", "").splitlines():
            if not line.strip():
                continue
            # Clients connect before the remote kernel has bound its ports; ZMQ retries, so
            # these refusals during boot are expected and only worth a debug line.
            level = logging.DEBUG if _OPEN_FAILED_RE.search(line) else logging.INFO
            self.log.log(level, "ssh: %s", line.strip())

    def _handle_events(self, pending: list) -> Optional[int]:  # type: ignore[type-arg]
        """Consume the agent's pending events; the exit code once one says the kernel ended."""
        while pending:
            code = self._on_event(pending.pop(0))
            if code is not None:
                return code
        return None

    def _on_event(self, event: Dict[str, object]) -> Optional[int]:
        kind = event.get("event")
        if kind == "exited":
            returncode = event.get("returncode")
            if event.get("reason") in ("proxy_gone", "proxy_silent"):
                self.log.error(
                    "the connection to %s was lost for too long; the remote agent shut the kernel "
                    "down. Exiting so that Jupyter starts a new one", self.hostspec.label,
                )
                return exc.ConnectionLostError.exit_code
            if returncode == 0:
                self.log.info("kernel exited")
                return 0
            how = (
                f"killed by signal {-returncode}" if isinstance(returncode, int) and returncode < 0
                else f"exit code {returncode}"
            )
            self.log.error("the remote kernel died (%s); exiting so that Jupyter restarts it", how)
            return exc.KernelDiedError.exit_code
        self.log.debug("agent event: %s", event)
        return None


#: Variables Jupyter sets for a kernel that mean the same on the remote: the notebook's path
#: (ipykernel exposes it as ``__session__``; tools such as LSP integrations read it).
FORWARDED_VARIABLES = ("JPY_SESSION_NAME",)


def forwarded_env(local: Mapping[str, str], explicit: Dict[str, str]) -> Dict[str, str]:
    """The remote kernel's extra environment: --env values, plus the forwarded Jupyter ones."""
    env = {name: local[name] for name in FORWARDED_VARIABLES if name in local}
    env.update(explicit)
    return env


def _relay_remote_output(data: bytes, secret: str) -> None:
    """The kernel's own stderr/stdout (its log) goes to ours, which Jupyter logs; never the key."""
    text = redact_text(data.decode("utf-8", "replace"), secret)
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
