"""The kernel owner: prepares its files (connfile.py), starts it detached, interrupts it, and owns its
shutdown ladder and its end.

Part of the remote agent (see bootstrap.py): shipped as source, standard library only at module
level, Python >= 3.8.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from .connfile import PORT_NAMES, ipc_directory, remove_ipc_directory, speaks_ipc, write_connection_file
from .kernelcmd import check_requirements, kernel_command, launch_argv
from .launch import IOPUB_HWM
from .warm import WarmKernel, ensure_pool, is_default_ipykernel, pool_socket, start_kernel
from .protocol import (SHUTDOWN_REPLY_WAIT, SHUTDOWN_REQUEST_WAIT, SIGTERM_WAIT, AgentParams, BootstrapError,
                       kernel_environment, package_version, runtime_dir)


#: How long a kernel waits for a new warm pool to import ipykernel (then it starts cold).
POOL_WAIT = 20.0  # a cold start would take as long; the proxy gives the whole start 30 s (--timeout)


class Agent:
    """Prepares and starts one kernel, and owns it until it ends.

    prepare() runs in the SSH session (its errors go straight back to the proxy); launch() runs
    in the keeper process (keeper.py), which must be the kernel's parent to wait for it.
    """

    def __init__(self, params: AgentParams) -> None:
        self.params = params
        self.kernel_id = params.kernel_id
        self.proc = None  # type: subprocess.Popen | None
        self.connection_file = ""
        self.log_file = ""
        self.socket_file = ""
        self.cwd = os.getcwd()  # the login directory: where the kernel starts (unless --workdir)
        self.command = {}  # type: dict
        self.ports = {}  # type: dict
        self.transport = "tcp"
        self.ip = "127.0.0.1"
        self.ipc_dir = ""  # the kernel's private directory of unix sockets (ipc transport)
        self.end_reason = ""  # why we ended the kernel; "" if it ended by itself
        self.warm_pool = ""  # the socket of this configuration's warm pool (remote/warm.py), if any
        self.started_warm = False  # forked by a pool that was ready (not one started for this kernel)
        self.agent_server = ""  # the socket of the agent server for restarts (remote/agentserver.py), if any
        self._shutdown_started = threading.Event()

    # -- start ----------------------------------------------------------------------------------
    def choose_paths(self) -> None:
        """The names of the kernel's files in the remote runtime dir (0700)."""
        try:
            directory = runtime_dir()
        except OSError as e:
            raise BootstrapError("connection_file", "cannot make the runtime dir: %s" % e) from e
        # A random tag: two machines may well use the same kernel id on one account.
        tag = os.urandom(3).hex()
        fname = os.path.join(directory, "kernel-ssh-%s-%s.json" % (self.kernel_id, tag))
        self.connection_file = fname
        self.log_file = fname[: -len(".json")] + ".log"
        self.socket_file = fname[: -len(".json")] + ".sock"

    def write_connection_file(self, ipc: bool) -> None:
        """A 0600 connection file holding the local session key.

        ``ipc`` (kernels that speak ZeroMQ's ipc transport: ipykernel's): the kernel listens on
        unix sockets in a directory of its own (0700), which nobody else on the host can reach;
        no TCP port of it listens (ipc_directory). Other kernels get loopback TCP ports, picked
        under a lock and skipping ports in other kernels' files (every user of the host can
        connect to those: the keeper says so in the kernel's log). jupyter_client is not
        imported: that costs the remote python 0.2-0.3 s before the kernel can even be started.
        """
        info = {
            "ip": "127.0.0.1",
            "key": self.params.key,
            "transport": "tcp",
            "signature_scheme": self.params.signature_scheme or "hmac-sha256",
            "kernel_name": self.params.kernel_name or "",
        }  # type: dict
        try:
            if ipc:
                self.ipc_dir = ipc_directory(os.path.dirname(self.connection_file), self.connection_file[-11:-5])
                info.update(transport="ipc", ip=os.path.join(self.ipc_dir, "k"))
                info.update({name: n + 1 for n, name in enumerate(PORT_NAMES)})
            self.transport, self.ip = info["transport"], info["ip"]
            self.ports = write_connection_file(self.connection_file, info, pick_ports=not ipc)
        except OSError as e:
            raise BootstrapError(
                "connection_file", "cannot write the connection file %s: %s" % (self.connection_file, e)
            ) from e

    def wait_for_ports(self, timeout: float) -> None:
        """In the keeper, after launch(): until the kernel has bound its unix sockets."""
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(self.endpoint(name[: -len("_port")])[1]) for name in PORT_NAMES):
            if self.proc is not None and self.proc.poll() is not None:
                raise BootstrapError("kernel_start", "the kernel exited (code %s) while starting: %s"
                                     % (self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                raise BootstrapError("kernel_start", "the kernel did not bind its sockets within %.0f s: %s"
                                     % (timeout, self.log_tail()))
            time.sleep(0.01)

    @property
    def ports_from_kernel(self) -> bool:
        """Whether the kernel's sockets exist only once it has bound them (ipc)."""
        return self.transport == "ipc"

    def endpoint(self, channel: str) -> tuple:
        """Where the kernel's ``channel`` (shell, iopub, ...) listens: ("unix", path) or
        ("tcp", host, port)."""
        port = int(self.ports["%s_port" % channel])
        if self.transport == "ipc":
            return ("unix", "%s-%d" % (self.ip, port))
        return ("tcp", "127.0.0.1", port)

    def log_tail(self, size: int = 1500) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - size))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def prepare(self) -> None:
        """In the SSH session: check the remote python, write the connection and log files,
        work out the kernel's command (kernelcmd.py). Errors here reach the proxy directly."""
        check_requirements(self.params)
        self.choose_paths()
        self.command = kernel_command(self.params, self.connection_file, sys.executable)
        self.write_connection_file(ipc=speaks_ipc(self.command["argv"]))
        try:
            # O_APPEND: the kernel and the keeper (its own notes) both write to it.
            os.close(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600))
        except OSError as e:
            self.remove_files()
            raise BootstrapError("connection_file", "cannot create %s: %s" % (self.log_file, e)) from e

    def launch(self) -> None:
        """In the keeper: start the kernel in its own session: forked by this configuration's
        warm pool if there is one (remote/warm.py), else as a new process."""
        argv = self.command["argv"]
        cwd = self.command["cwd"] or self.cwd
        env = kernel_environment(os.environ, self.command["env"], os.getpid())
        if self.params.warm is not None and is_default_ipykernel(argv, sys.executable):
            path = pool_socket(os.path.dirname(self.connection_file), sys.executable, env, cwd)
            if len(path.encode()) < 100:  # a socket address's limit (~104-108 bytes)
                self.warm_pool = path
                self.proc = start_kernel(path, argv=argv, env=env, cwd=cwd, log_file=self.log_file,
                                         note=self.log, iopub_hwm=IOPUB_HWM)
                self.started_warm = self.proc is not None
                if self.proc is None and ensure_pool(path, python=sys.executable, env=env, cwd=cwd,
                                                     idle=float(self.params.warm), timeout=POOL_WAIT,
                                                     note=self.log):
                    # The first kernel of a configuration: its pool's imports are its own boot.
                    self.proc = start_kernel(path, argv=argv, env=env, cwd=cwd, log_file=self.log_file,
                                             note=self.log, iopub_hwm=IOPUB_HWM)
                if self.proc is not None:
                    return
        try:
            log_fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise BootstrapError("connection_file", "cannot open %s: %s" % (self.log_file, e)) from e
        try:
            # start_new_session: signals for the keeper's group (a terminal, a killpg) must not
            # reach the kernel; interrupts go to the kernel's own group.
            self.proc = subprocess.Popen(
                launch_argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise BootstrapError("kernel_start", "cannot start %s: %s" % (argv[0], e)) from e
        finally:
            os.close(log_fd)

    def ready_event(self) -> dict:
        import platform

        return {
            "pid": self.proc.pid if self.proc else None,
            "ports": self.ports,
            "transport": self.transport,
            "hostname": socket.gethostname(),
            "python": sys.executable,
            "python_version": platform.python_version(),
            "ipykernel_version": package_version("ipykernel"),
            "connection_file": self.connection_file,
            "socket": self.socket_file,
            "kernel_id": self.kernel_id,
            "keeper_pid": os.getpid(),
            "warm": self.started_warm,
            "agent_server": self.agent_server or None,
            # The pool that forked it (also the one started for it): status asks it later.
            "warm_pool": self.warm_pool if isinstance(self.proc, WarmKernel) else None,
        }

    # -- control --------------------------------------------------------------------------------
    def signal_kernel(self, signum: int) -> None:
        """Signal the kernel's process group, as a local Jupyter does (reaches `!cmd` children)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.send_signal(signum)
            except OSError:
                pass

    def interrupt(self) -> None:
        """SIGINT to the kernel's group, or an interrupt_request for kernels that want messages."""
        if self.command.get("interrupt_mode") == "message":
            threading.Thread(target=self._request_interrupt, daemon=True).start()
        else:
            self.signal_kernel(signal.SIGINT)

    def _request_interrupt(self) -> None:
        try:
            from jupyter_client.blocking.client import BlockingKernelClient

            client = BlockingKernelClient()
            client.load_connection_file(self.connection_file)
            client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
            try:
                msg = client.session.msg("interrupt_request", {})
                client.control_channel.send(msg)
                client.control_channel.get_msg(timeout=SHUTDOWN_REPLY_WAIT)
            finally:
                client.stop_channels()
        except Exception as e:  # noqa: BLE001 - nothing else to try; say so in the log
            self.log("interrupt_request failed: %s" % e)

    def _request_shutdown(self) -> bool:
        """Ask the kernel to shut down over its control channel (runs its cleanup, saves history).

        Returns whether the kernel acknowledged: one that is still booting (or hung) does not,
        and then waiting for it to exit on its own would only delay the signals.
        """
        try:
            from jupyter_client.blocking.client import BlockingKernelClient

            client = BlockingKernelClient()
            client.load_connection_file(self.connection_file)
            client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
            try:
                msg_id = client.shutdown()
                deadline = time.monotonic() + SHUTDOWN_REPLY_WAIT
                while time.monotonic() < deadline:
                    try:
                        reply = client.control_channel.get_msg(timeout=deadline - time.monotonic())
                    except Exception:  # noqa: BLE001 - queue.Empty: no answer in time
                        return False
                    if reply.get("parent_header", {}).get("msg_id") == msg_id:
                        return True
                return False
            finally:
                client.stop_channels()
        except Exception as e:  # noqa: BLE001 - fall through to signals
            self.log("shutdown_request failed (%s); terminating the kernel" % e)
            return False

    def shutdown(self, reason: str = "requested") -> None:
        """Shut the kernel down: interrupt and polite request, then SIGTERM, then SIGKILL.

        ``reason`` is reported in the ``exited`` event. Safe to call twice (from the command
        thread and on stdin EOF).
        """
        if self._shutdown_started.is_set():
            return
        self._shutdown_started.set()
        self.end_reason = reason
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # As Jupyter does: interrupt first, so that a busy cell does not hold the shutdown up.
        self.interrupt()
        acknowledged = self._request_shutdown()
        first_wait = SHUTDOWN_REQUEST_WAIT if acknowledged else 0.2
        for signum, wait in ((None, first_wait), (signal.SIGTERM, SIGTERM_WAIT)):
            if signum is not None:
                self.signal_kernel(signum)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
        self.signal_kernel(signal.SIGKILL)

    def log(self, message: str) -> None:
        """A note in the kernel's log file, which the keeper relays to the proxy."""
        try:
            with open(self.log_file, "a") as f:
                f.write("ssh_ipykernel agent: %s\n" % message)
        except OSError:
            pass

    # -- end --------------------------------------------------------------------------------------
    def remove_files(self) -> None:
        for path in (self.connection_file, self.log_file, self.socket_file):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    self.log("could not remove %s: %s" % (path, e))
        if self.ipc_dir:
            remove_ipc_directory(self.ipc_dir)

    def reap(self) -> "int | None":
        """The kernel's exit code once it has ended (and its process group is cleaned), else None."""
        assert self.proc is not None
        returncode = self.proc.poll()
        if returncode is None:
            return None
        # Children the kernel left in its process group (``!sleep 1000 &``) go with it, as
        # they would when a local Jupyter kills a kernel.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except OSError:
            pass
        return returncode
