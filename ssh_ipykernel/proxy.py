"""The local proxy: lives exactly as long as the remote kernel.

Start-up is connect -> launch -> forward, each logged with its time; an error there (bad host,
refused key, no ipykernel...) ends the proxy with its own exit code, and a kernel that was
already launched is shut down. Then the supervisor (supervisor.py) serves the kernel and
reconnects whenever the network drops, for as long as the remote keeper holds the kernel:

* SIGINT -> interrupt the remote kernel (its state is kept);
* SIGTERM / SIGHUP -> ask the keeper to shut the kernel down cleanly, then exit;
* SIGQUIT -> detach: exit and leave the kernel running (its grace period applies);
* the kernel exited -> exit 0 if it exited cleanly (a shutdown or restart Jupyter asked for),
  1 otherwise (it died), so that Jupyter's restarter replaces it.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from .connection import kernel_id_from_path, load_connection_file
from .hosts import parse_host
from .launcher import LaunchOptions
from .session.client import RemoteKernel
from .log import KernelLogAdapter, redact
from .options import DEFAULT_PERSIST
from .remote.protocol import DEFAULT_CLIENT_TIMEOUT
from .signals import SignalRelay
from .state import prune, remove_state, write_state
from .supervisor import SHUTDOWN_TIMEOUT, State, Supervisor
from .transport import TransportOptions, create_transport
from .transport.base import Transport
from .tunnels import Tunnels, plan_forwards

logger = logging.getLogger(__name__)

#: How long the remote kernel outlives a lost connection by default: a laptop's lunch break.
DEFAULT_GRACE = 3600.0


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
    grace: Optional[float] = DEFAULT_GRACE  # None: keep the kernel forever
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    persist: float = DEFAULT_PERSIST  # seconds the host's shared connection outlives its last kernel
    launch: LaunchOptions = field(default_factory=LaunchOptions)  # --remote-kernel, --workdir, ...


class Proxy:
    """Run one remote kernel for one local connection file."""

    def __init__(self, options: ProxyOptions) -> None:
        self.options = options
        self.hostspec = parse_host(options.host)
        self.kernel_id = kernel_id_from_path(options.connection_file)
        self.log = KernelLogAdapter(logger, {"host": self.hostspec.label, "kernel": self.kernel_id})
        self.started = time.time()
        self._state: Dict[str, object] = {}

    def new_transport(self, connect_timeout: float) -> Transport:
        options = TransportOptions(
            ssh_config=self.options.ssh_config,
            connect_timeout=connect_timeout,
            verbose=logger.isEnabledFor(logging.DEBUG),
            persist=self.options.persist,
        )
        return create_transport(self.options.transport, self.hostspec, options, name=self.kernel_id)

    def run(self) -> int:
        """Start the kernel and serve it; return the process exit code."""
        info = load_connection_file(self.options.connection_file)
        redact(info["key"])
        self._state = {
            "pid": os.getpid(), "host": self.hostspec.spec, "kernel_id": self.kernel_id,
            "connection_file": os.path.abspath(self.options.connection_file),
            "transport": self.options.transport, "state": State.CONNECTING.value, "reconnects": 0,
            "started": self.started, "since": self.started,
        }
        try:
            prune()  # files of proxies killed with SIGKILL
        except OSError:
            pass
        self._write_state()
        t0 = time.monotonic()
        kernel: Optional[RemoteKernel] = None
        try:
            with SignalRelay() as signals:
                transport = self.new_transport(self.options.timeout)
                try:
                    self.log.info("connecting to %s", self.hostspec.spec)
                    transport.connect()
                    t1 = time.monotonic()
                    self.log.info("connected in %.2f s (%s) with %s", t1 - t0,
                                  "shared connection" if transport.reused else "new connection",
                                  self.options.transport)
                    kernel = RemoteKernel(
                        transport,
                        kernel_id=self.kernel_id,
                        key=info["key"],
                        signature_scheme=info["signature_scheme"],
                        kernel_name=info["kernel_name"],
                        python=self.options.python,
                        env=forwarded_env(os.environ, self.options.env),
                        sudo=self.options.sudo,
                        grace=self.options.grace,
                        client_timeout=self.options.client_timeout,
                        launch=self.options.launch,
                    )
                    self.log.info("launching kernel with %s", self.options.python or "python3 (remote PATH)")
                    ready = kernel.start(self.options.timeout)
                    t2 = time.monotonic()
                    self.log.info(
                        "kernel pid %d on %s (%s, Python %s, ipykernel %s) launched in %.2f s",
                        ready.pid, ready.hostname, ready.python, ready.python_version,
                        ready.ipykernel_version, t2 - t1,
                    )
                    self._state.update(remote_pid=ready.pid, remote_hostname=ready.hostname,
                                       remote_connection_file=ready.connection_file)
                    tunnels = Tunnels(transport, plan_forwards(info, ready.ports))
                    tunnels.open()
                except BaseException:
                    if kernel is not None:  # launched (or launching): it must not wait for nobody
                        kernel.stop(SHUTDOWN_TIMEOUT)
                    transport.close()
                    raise
                signals.raise_on_stop = False
                # A SIGINT that came while the kernel was booting would kill it, not
                # interrupt a cell; a stop that slipped in after start-up still counts.
                early = signals.pending()
                if signal.SIGINT in early:
                    self.log.info("interrupt during start-up ignored")
                supervisor = Supervisor(
                    kernel=kernel, transport=transport, tunnels=tunnels,
                    new_transport=self.new_transport, signals=signals, log=self.log,
                    secret=info["key"], grace=self.options.grace,
                    client_timeout=self.options.client_timeout, attach_timeout=min(self.options.timeout, 15.0),
                    on_state=self._on_state,
                )
                supervisor.log.info("%s: tunnels up in %.3f s; ready %.2f s after start", State.UP.value,
                                    time.monotonic() - t2, time.monotonic() - t0)
                self._on_state(supervisor)
                return supervisor.run(stop=any(s != signal.SIGINT for s in early))
        finally:
            remove_state(self.kernel_id)

    def _on_state(self, supervisor: Supervisor) -> None:
        self._state.update(state=supervisor.state.value, reconnects=supervisor.reconnects, since=time.time())
        self._write_state()

    def _write_state(self) -> None:
        try:
            write_state(self.kernel_id, self._state)
        except OSError as e:  # status is a convenience; never a reason to fail the kernel
            self.log.debug("cannot write the state file: %s", e)


#: Variables Jupyter sets for a kernel that mean the same on the remote: the notebook's path
#: (ipykernel exposes it as ``__session__``; tools such as LSP integrations read it).
FORWARDED_VARIABLES = ("JPY_SESSION_NAME",)


def forwarded_env(local: Mapping[str, str], explicit: Dict[str, str]) -> Dict[str, str]:
    """The remote kernel's extra environment: --env values, plus the forwarded Jupyter ones."""
    env = {name: local[name] for name in FORWARDED_VARIABLES if name in local}
    env.update(explicit)
    return env
