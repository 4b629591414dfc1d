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
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from .connection import CHANNELS, kernel_id_from_path, load_connection_file
from .exceptions import AuthenticationError, KernelDiedError, LoginRequiredError, RemoteError, SSHKernelError
from .session.client import KernelInfo, RemoteKernel
from .log import KernelLogAdapter, redact
from .options import ProxyOptions
from .signals import SignalRelay
from .state import (State, end_pool_record, load_pool_record, pool_ends, prune, record_error, record_pool, remove_state,
                    write_state)
from .status import format_duration
from .transport import build_transport
from .transport.base import Transport
from .transport.forwarder import release_reserved
from .transport.forwarder import reserve as reserve_ports
from .transport.messages import login_command
from .channels import Channels

if TYPE_CHECKING:
    from .session.slurmkernel import SlurmKernel
    from .supervisor import Supervisor

logger = logging.getLogger(__name__)

#: The state file's state while the proxy waits for `ssh-ipykernel login` (ssh-ipykernel status).
WAITING_FOR_LOGIN = "waiting for login"


class Proxy:
    """Run one remote kernel for one local connection file."""

    def __init__(self, options: ProxyOptions) -> None:
        """``options`` as parsed by the CLI, with the transport kind resolved (transport.resolved)."""
        self.options = options
        self.hostspec = options.host
        self.kernel_id = kernel_id_from_path(options.connection_file)
        self.log = KernelLogAdapter(logger, {"host": self.hostspec.label, "kernel": self.kernel_id})
        self.started = time.time()
        self._state: Dict[str, object] = {}
        #: The error the proxy ends with, if any (also when the supervisor returns its exit code).
        self.failure: Optional[SSHKernelError] = None
        self._secret = ""  # the session key, once read: never written into the state file
        self._pool_recorded = False  # a warm pool forked our kernel: state.record_pool

    def new_transport(self, connect_timeout: float) -> Transport:
        return build_transport(self.options.connection, connect_timeout=connect_timeout, name=self.kernel_id,
                               verbose=logger.isEnabledFor(logging.DEBUG))

    def run(self) -> int:
        """Start the kernel and serve it; return the process exit code.

        Raises the SSHKernelError that ends start-up. Either way the state file ends with the
        proxy: removed, or replaced by the final record of the error it ended with."""
        self._state = {
            "pid": os.getpid(), "host": self.hostspec.spec, "kernel_id": self.kernel_id,
            "connection_file": os.path.abspath(self.options.connection_file),
            "transport": self.options.connection.transport, "state": State.CONNECTING.value, "reconnects": 0,
            "started": self.started, "since": self.started,
        }
        try:
            info = load_connection_file(self.options.connection_file)
        except SSHKernelError as e:
            self.failure = e
            self._finish()
            raise
        redact(info["key"])
        self._secret = info["key"]
        # Hold Jupyter's ports from now on (listened on once the signals are set up).
        reserve_ports(info["ip"], [info[channel] for channel in CHANNELS])  # type: ignore[literal-required]
        try:
            prune()  # files of proxies killed with SIGKILL, old final records
        except OSError:
            pass
        self._write_state()
        t0 = time.monotonic()
        kernel: Optional[RemoteKernel] = None
        channels: Optional[Channels] = None
        try:
            with SignalRelay() as signals:
                transport = self.new_transport(self.options.connection.timeout)
                try:
                    # Clients connect at once and what they send waits here for the kernel (as
                    # in an outage): a ZeroMQ client refused meanwhile would try again only
                    # every 100 ms, and its handshake would start only then.
                    channels = Channels(info, host=self.hostspec.label, limit=self.options.output_buffer,
                                        note=self.log.warning)
                    channels.listen()
                    self.log.info("connecting to %s", self.hostspec.spec)
                    transport = self._connect(transport)
                    t1 = time.monotonic()
                    self.log.info("connected in %.2f s (%s) with %s", t1 - t0,
                                  "shared connection" if transport.reused else "new connection",
                                  self.options.connection.transport)
                    kernel = self._new_kernel(
                        transport,
                        kernel_id=self.kernel_id,
                        key=info["key"],
                        signature_scheme=info["signature_scheme"],
                        kernel_name=info["kernel_name"],
                        python=self.options.python,
                        env=forwarded_env(os.environ, self.options.env),
                        sudo=self.options.sudo,
                        grace=self.options.lifetime.grace,
                        client_timeout=self.options.lifetime.client_timeout,
                        launch=self.options.launch,
                    )
                    self.log.info("launching kernel with %s", self.options.python or "python3 (remote PATH)")
                    # What serves the kernel once it is up is imported while the remote starts it.
                    _import_meanwhile("ssh_ipykernel.supervisor")
                    ready = kernel.start(self.options.connection.timeout)
                    t2 = time.monotonic()
                    self.log.info(
                        "kernel pid %d on %s (%s, Python %s, ipykernel %s) launched in %.2f s%s",
                        ready.pid, ready.hostname, ready.python, ready.python_version,
                        ready.ipykernel_version, t2 - t1, _how_started(ready),
                    )
                    self._state.update(remote_pid=ready.pid, remote_hostname=ready.hostname,
                                       remote_connection_file=ready.connection_file, warm=ready.warm,
                                       warm_pool=ready.warm_pool or None)
                    slurm = self._slurm_kernel(kernel)
                    if ready.warm_pool and slurm is None:  # a job's pools are the node's (they end with it)
                        self._record_pool(ready.warm_pool, ready)
                    if slurm is not None and slurm.job is not None:
                        self._state.update(slurm_job=slurm.job_id, slurm_node=slurm.job.nodes,
                                           slurm_ends=time.time() + slurm.job.time_left
                                           if slurm.job.time_left is not None else None)
                    try:
                        channels.resume(kernel.open_stream(self.options.connection.timeout),
                                        self.options.connection.timeout, first=True)
                    except RemoteError:
                        # A kernel that died at once takes its keeper along: its "exited" says why,
                        # and the supervisor reports it as for any kernel that died.
                        if not kernel.exited_meanwhile(2.0):
                            raise
                except BaseException:
                    if channels is not None:
                        channels.close()
                    if kernel is not None:  # launched (or launching): it must not wait for nobody
                        from .policy import SHUTDOWN_TIMEOUT

                        kernel.stop(SHUTDOWN_TIMEOUT)
                    transport.close()
                    raise
                signals.raise_on_stop = False
                # A SIGINT that came while the kernel was booting would kill it, not
                # interrupt a cell; a stop that slipped in after start-up still counts.
                early = signals.pending()
                if signal.SIGINT in early:
                    self.log.info("interrupt during start-up ignored")
                from .supervisor import Supervisor

                supervisor = Supervisor(
                    kernel=kernel, transport=transport, channels=channels,
                    new_transport=self.new_transport, signals=signals, log=self.log,
                    secret=info["key"], grace=kernel.params.grace,  # capped by a SLURM job's time limit
                    client_timeout=self.options.lifetime.client_timeout,
                    attach_timeout=min(self.options.connection.timeout, 15.0),
                    on_state=self._on_state,
                )
                supervisor.log.info("%s: channels up in %.3f s; ready %.2f s after start", State.UP.value,
                                    time.monotonic() - t2, time.monotonic() - t0)
                self._on_state(supervisor)
                code = supervisor.run(stop=any(s != signal.SIGINT for s in early))
                self.failure = supervisor.error
                slurm = self._slurm_kernel(kernel)
                why = slurm.why_ended() if slurm is not None else None
                if why:
                    # The scheduler ended the job (time limit, scancel, preemption): a dead
                    # kernel for Jupyter, whatever the keeper's last words were.
                    self.log.error("the kernel ended with its job: %s", why)
                    code = code or KernelDiedError.exit_code
                return code
        except SSHKernelError as e:
            self.failure = e
            raise
        finally:
            self._finish()

    def _new_kernel(self, transport: Transport, **kwargs: Any) -> RemoteKernel:
        """The session client: in a SLURM job with --slurm (session/slurmkernel.py), else on the host."""
        if self.options.slurm is not None:
            from .session.slurmkernel import SlurmKernel

            return SlurmKernel(transport, slurm=self.options.slurm, log_to=self.log, **kwargs)
        # An agent server for restarts (remote/agentserver.py): not for --sudo, whose server
        # would be the other user's, out of reach of a direct stream.
        serve = self.options.launch.warm is not None and not self.options.sudo
        return RemoteKernel(transport, serve=serve, agent_server=self._restart_server() if serve else "", **kwargs)

    def _config_id(self) -> str:
        """These options (the kernelspec's argv without the connection file), fingerprinted."""
        import json

        from .remote.protocol import fingerprint

        argv = self.options.argv()[3:]  # not the python running it, nor -m ssh_ipykernel
        if "-f" in argv:
            at = argv.index("-f")
            del argv[at:at + 2]
        return fingerprint(json.dumps(argv).encode("utf-8"))

    def _restart_server(self) -> str:
        """The agent server of this kernel's last start (Jupyter restarts a kernel with the
        same connection file, so its id): "" unless that start had one, with these options
        and this version's agent, and its idle time is not up."""
        record = load_pool_record(self.kernel_id)
        server = record.get("agent_server") if record else None
        if not record or not isinstance(server, str) or not server:
            return ""
        ends = pool_ends(record)
        if ends is not None and time.time() > ends:
            return ""
        from .session.bundle import agent_bundle_id

        if record.get("config") != self._config_id() or record.get("bundle") != agent_bundle_id():
            return ""
        return server

    def _slurm_kernel(self, kernel: RemoteKernel) -> Optional[SlurmKernel]:
        """``kernel`` if it runs in a SLURM job (imported only then)."""
        if self.options.slurm is None:
            return None
        from .session.slurmkernel import SlurmKernel

        return kernel if isinstance(kernel, SlurmKernel) else None

    def _connect(self, transport: Transport) -> Transport:
        """``transport.connect()``; on a host that needs a person to log in, wait for
        ``ssh-ipykernel login`` (--login-wait) and join the connection it opens."""
        try:
            transport.connect()
            return transport
        except LoginRequiredError as e:
            error = e
        connection = self.options.connection
        wait = connection.login_wait
        command = login_command(self.hostspec.spec, connection.ssh_config)
        if wait <= 0:
            raise self._no_login(error, wait)
        self.log.warning(
            "%s needs a person to log in (password, one-time code or passphrase). Run `%s` in a terminal "
            "(in JupyterLab: File > New > Terminal); this kernel waits up to %s for it, then starts",
            self.hostspec.label, command, format_duration(wait))
        self._state.update(state=WAITING_FOR_LOGIN, since=time.time())
        self._write_state()
        started = time.monotonic()
        noticed = transport.wait_for_login(started + wait)
        transport.close()
        if noticed is None:
            raise self._no_login(error, wait)
        self.log.info("%s: logged in (after %.1f s of waiting; noticed %.3f s after the login); joining that "
                      "connection", self.hostspec.label, time.monotonic() - started, noticed)
        self._state.update(state=State.CONNECTING.value, since=time.time())
        self._write_state()
        transport = self.new_transport(connection.timeout)
        transport.connect()
        return transport

    def _no_login(self, error: LoginRequiredError, wait: float) -> AuthenticationError:
        command = login_command(self.hostspec.spec, self.options.connection.ssh_config)
        waited = f"nobody logged in within {format_duration(wait)}" if wait > 0 else "a kernel has no terminal to ask in"
        return AuthenticationError(
            f"logging in to {self.hostspec.label} needs a password, passphrase or code typed by a person, and "
            f"{waited}. Run `{command}` in a terminal (in JupyterLab: File > New > Terminal), then restart "
            f"the kernel; or use key authentication (ssh-copy-id; ssh-add for a key with a passphrase)",
            host=error.host, detail=error.detail)

    def _record_pool(self, socket: str, ready: KernelInfo) -> None:
        """Note the pool that forked our kernel, for ``status`` (the pool outlives us), and the
        agent server for the kernel's restart."""
        from .session.bundle import agent_bundle_id

        connection = self.options.connection
        try:
            record_pool(self.kernel_id, {
                "host": self.hostspec.spec, "ssh_config": connection.ssh_config, "transport": connection.transport,
                "python": ready.python, "sudo": self.options.sudo, "pre_command": self.options.launch.pre_command,
                "runtime_dir": os.path.dirname(ready.connection_file), "socket": socket,
                "warm": self.options.launch.warm, "remote_hostname": ready.hostname, "pid": os.getpid(),
                "kernel_id": self.kernel_id, "started": time.time(),
                # For a restart: the agent server, and what it runs for (options, agent version).
                "agent_server": ready.agent_server or None, "config": self._config_id(),
                "bundle": agent_bundle_id() if ready.agent_server else None,
            })
            self._pool_recorded = True
        except OSError as e:  # status is a convenience; never a reason to fail the kernel
            self.log.debug("cannot write the pool record: %s", e)

    def _finish(self) -> None:
        """The state file's end: the final record for whoever started us (``manage check``
        reads the error from it), or nothing when the proxy ends without an error. The pool
        record (if any) notes when our kernel ended: its pool lives --warm longer."""
        release_reserved()
        if self._pool_recorded:
            try:
                end_pool_record(self.kernel_id)
            except OSError as e:
                self.log.debug("cannot write the pool record: %s", e)
        try:
            if self.failure is not None and self.failure.exit_code != 0:
                record_error(self.kernel_id, self._state, self.failure, secret=self._secret)
            else:
                remove_state(self.kernel_id)
        except OSError as e:
            self.log.debug("cannot write the state file: %s", e)

    def _on_state(self, supervisor: Supervisor) -> None:
        self._state.update(state=supervisor.state.value, reconnects=supervisor.reconnects, since=time.time())
        self._write_state()

    def _write_state(self) -> None:
        try:
            write_state(self.kernel_id, self._state)
        except OSError as e:  # status is a convenience; never a reason to fail the kernel
            self.log.debug("cannot write the state file: %s", e)


def record_early_error(connection_file: str, host: str, error: SSHKernelError) -> None:
    """The final record of a proxy that failed before it could start (a bad option), so that
    whoever started it reads why as it would for any other failure (``state.take_error``)."""
    if error.exit_code == 0:
        return  # Cancelled: not a failure
    fields: Dict[str, object] = {"pid": os.getpid(), "host": host, "kernel_id": kernel_id_from_path(connection_file),
                                 "connection_file": os.path.abspath(connection_file), "started": time.time()}
    try:
        record_error(str(fields["kernel_id"]), fields, error)
    except OSError as e:
        logger.debug("cannot write the state file: %s", e)


#: Variables Jupyter sets for a kernel that mean the same on the remote: the notebook's path
#: (ipykernel exposes it as ``__session__``; tools such as LSP integrations read it).
FORWARDED_VARIABLES = ("JPY_SESSION_NAME",)


def forwarded_env(local: Mapping[str, str], explicit: Mapping[str, str]) -> Dict[str, str]:
    """The remote kernel's extra environment: --env values, plus the forwarded Jupyter ones."""
    env = {name: local[name] for name in FORWARDED_VARIABLES if name in local}
    env.update(explicit)
    return env


def _import_meanwhile(*modules: str) -> None:
    """Import ``modules`` in a thread: the proxy's start is mostly waiting for the remote, and
    a module the start does not need before then costs it nothing there (Python's import locks
    make a later ``import`` of the same module wait for this one)."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the import where it is needed raises it again
                pass

    threading.Thread(target=run, name="imports", daemon=True).start()


def _how_started(ready: KernelInfo) -> str:
    """The launch line's note: `` (warm)`` for a kernel forked by a warm pool, and whether the
    agent server of the kernel's last start started it (a restart)."""
    how = (["warm"] if ready.warm else []) + (["through the agent server"] if ready.restarted_direct else [])
    return " (%s)" % ", ".join(how) if how else ""
