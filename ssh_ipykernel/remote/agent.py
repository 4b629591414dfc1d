"""The remote agent's kernel owner: starts ipykernel detached, relays interrupts, shuts it down.

Part of the remote agent (see bootstrap.py): shipped as source, standard library only at module
level, Python >= 3.8. Lines ending in "# local-only" are dropped from the shipped bundle, where
the three modules share one namespace.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from .kernelcmd import check_requirements, kernel_command  # local-only
from .protocol import SHUTDOWN_REPLY_WAIT, SHUTDOWN_REQUEST_WAIT, SIGTERM_WAIT, BootstrapError, package_version, kernel_environment, runtime_dir, write_event  # local-only


class Agent:
    """Starts one kernel and owns it until it ends."""

    def __init__(self, params: dict, out=None, err=None) -> None:
        self.params = params
        self.kernel_id = params["kernel_id"]
        self.out = out if out is not None else sys.stdout.buffer
        self.err = err if err is not None else sys.stderr
        self.proc = None  # type: subprocess.Popen | None
        self.connection_file = ""
        self.log_file = ""
        self.ports = {}  # type: dict
        self._out_lock = threading.Lock()
        self.last_heard = time.monotonic()
        self.end_reason = ""  # why we ended the kernel; "" if it ended by itself
        self._shutdown_started = threading.Event()
        self._ended = threading.Event()

    # -- output to the proxy ------------------------------------------------------------------
    def emit(self, event: str, **fields: object) -> None:
        with self._out_lock:
            write_event(self.out, event, **fields)

    # -- start ----------------------------------------------------------------------------------
    def check_imports(self) -> None:
        import importlib.util

        for module, code in (("ipykernel", "no_ipykernel"), ("jupyter_client", "no_jupyter_client")):
            if importlib.util.find_spec(module) is None:
                raise BootstrapError(code, "%s is not installed for %s" % (module, sys.executable))

    def write_connection_file(self) -> None:
        """Free remote ports and a 0600 connection file holding the local session key."""
        try:
            from jupyter_client.connect import write_connection_file
        except ImportError as e:
            raise BootstrapError("no_jupyter_client", "cannot import jupyter_client: %s" % e) from e
        try:
            directory = runtime_dir()
            # A random tag: two machines may well use the same kernel id on one account.
            tag = os.urandom(3).hex()
            fname = os.path.join(directory, "kernel-ssh-%s-%s.json" % (self.kernel_id, tag))
            self.connection_file = fname
            fname, info = write_connection_file(
                fname=fname,
                ip="127.0.0.1",
                key=self.params["key"].encode("utf-8"),
                transport="tcp",
                signature_scheme=self.params.get("signature_scheme") or "hmac-sha256",
                kernel_name=self.params.get("kernel_name") or "",
            )
            os.chmod(fname, 0o600)
        except OSError as e:
            raise BootstrapError(
                "connection_file", "cannot write the connection file %s: %s" % (self.connection_file, e)
            ) from e
        self.ports = {k: v for k, v in info.items() if k.endswith("_port")}

    def launch(self) -> None:
        """Start the kernel (kernelcmd.py) detached from this SSH session, bound to 127.0.0.1."""
        check_requirements(self.params)
        self.write_connection_file()
        try:
            command = kernel_command(self.params, self.connection_file, sys.executable)
        except BootstrapError:
            self.remove_files()
            raise
        argv = command["argv"]
        self.log_file = self.connection_file[: -len(".json")] + ".log"
        try:
            log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            self.remove_files()
            raise BootstrapError("connection_file", "cannot create %s: %s" % (self.log_file, e)) from e
        try:
            # start_new_session: the kernel must not get the SIGHUP sshd sends this session's
            # process group when the connection drops; we decide when it ends.
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=command["cwd"],
                env=kernel_environment(os.environ, command["env"]),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            self.remove_files()
            raise BootstrapError("kernel_start", "cannot start %s: %s" % (argv[0], e)) from e
        finally:
            os.close(log_fd)

    def ready_event(self) -> dict:
        import platform

        return {
            "pid": self.proc.pid if self.proc else None,
            "ports": self.ports,
            "hostname": socket.gethostname(),
            "python": sys.executable,
            "python_version": platform.python_version(),
            "ipykernel_version": package_version("ipykernel"),
            "connection_file": self.connection_file,
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
        self.signal_kernel(signal.SIGINT)

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

    def handle_command(self, line: bytes) -> None:
        try:
            op = json.loads(line.decode("utf-8")).get("op")
        except (ValueError, AttributeError):
            self.log("ignoring malformed command %r" % line[:80])
            return
        if op == "interrupt":
            self.interrupt()
        elif op == "keepalive":
            pass  # read_commands noted the time
        elif op == "shutdown":
            threading.Thread(target=self.shutdown, daemon=True).start()
        else:
            self.log("ignoring unknown command %r" % op)

    def read_commands(self, stream) -> None:
        """Serve commands until EOF; EOF means the proxy (or its connection) is gone."""
        for line in iter(stream.readline, b""):
            self.last_heard = time.monotonic()
            if line.strip():
                self.handle_command(line)
        if not self._ended.is_set():
            self.log("proxy went away; shutting the kernel down")
            self.shutdown("proxy_gone")

    def watch_proxy(self, timeout: float) -> None:
        """Shut the kernel down when the proxy has been silent for ``timeout`` seconds.

        The proxy sends a keepalive line every few seconds. A cut network gives no EOF here
        (sshd may not notice a dead client for hours), and a kernel nobody can reach is a leak.
        """
        while not self._ended.wait(min(5.0, timeout / 4)):
            if time.monotonic() - self.last_heard > timeout:
                self.log("no word from the proxy for %.0f s; shutting the kernel down" % timeout)
                self.shutdown("proxy_silent")
                return

    # -- output relay ---------------------------------------------------------------------------
    def write_err(self, text: str) -> None:
        try:
            self.err.write(text)
            self.err.flush()
        except (OSError, ValueError):
            pass  # stderr gone with the proxy; nothing left to tell

    def log(self, message: str) -> None:
        self.write_err("ssh_ipykernel agent: %s\n" % message)

    def relay_log(self) -> None:
        """Copy the kernel's log file to stderr as it grows, until the kernel has ended."""
        try:
            f = open(self.log_file, "rb")
        except OSError:
            return
        with f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    self.write_err(chunk.decode("utf-8", "replace"))
                    continue
                if self._ended.is_set():
                    return
                self._ended.wait(0.1)  # wakes at once when the kernel ends: shutdown stays fast

    # -- end --------------------------------------------------------------------------------------
    def remove_files(self) -> None:
        for path in (self.connection_file, self.log_file):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    self.log("could not remove %s: %s" % (path, e))

    def wait(self) -> int:
        """Wait for the kernel to end, clean up after it, return its exit code."""
        assert self.proc is not None
        returncode = self.proc.wait()
        # Children the kernel left in its process group (``!sleep 1000 &``) go with it, as
        # they would when a local Jupyter kills a kernel.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except OSError:
            pass
        self._ended.set()
        return returncode
