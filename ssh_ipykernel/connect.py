"""``ssh-ipykernel connect``: tunnels to a kernel that is already running on a remote host.

For kernels somebody started by hand (``python -m ipykernel -f /tmp/k.json``, a container with
fixed ports) and for SSH kernels detached with SIGQUIT. The remote connection file is read over
the SSH session (the key never appears on a command line), a local connection file with free
local ports and the same key is written (0600), and the five channels are forwarded. The same
supervisor as the proxy's keeps the tunnels up through network loss. The kernel is never shut
down from here: stopping ``connect`` only disconnects. A kernel started by ssh_ipykernel is
attached through its keeper, which then keeps it for as long as we are connected.
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Callable

from . import exceptions as exc
from .connection import CHANNELS
from .session.client import RemoteKernel
from .log import KernelLogAdapter, redact
from .options import DEFAULT_CLIENT_TIMEOUT, ConnectOptions
from .signals import SignalRelay
from .channels import Channels
from .supervisor import Carrier, State, Supervisor
from .transport import build_transport
from .transport.base import Forward, Transport
from .tunnels import Forwarded, Tunnels

logger = logging.getLogger(__name__)


def default_local_file(host: str, remote_file: str) -> str:
    """``<jupyter runtime dir>/kernel-ssh-<host>-<remote file name>``: found by --existing."""
    from jupyter_core.paths import jupyter_runtime_dir

    base = os.path.basename(remote_file)
    base = base[:-5] if base.endswith(".json") else base
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{host}-{base}").strip("._-")
    directory = jupyter_runtime_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, f"kernel-ssh-{slug}.json")


class Connector:
    """Connect to one existing remote kernel until stopped or until the kernel ends."""

    def __init__(self, options: ConnectOptions) -> None:
        """``options`` as parsed by the CLI, with the transport kind resolved (transport.resolved)."""
        self.options = options
        self.hostspec = options.connection.host
        self.timeout = options.connection.timeout
        self.local_file = options.local_file or default_local_file(self.hostspec.label, options.remote_file)
        self.log = KernelLogAdapter(logger, {"host": self.hostspec.label, "kernel": "existing"})

    def new_transport(self, connect_timeout: float) -> Transport:
        return build_transport(self.options.connection, connect_timeout=connect_timeout,
                               name=f"connect-{os.getpid()}", verbose=logger.isEnabledFor(logging.DEBUG))

    def run(self, on_ready: Callable[[str, RemoteKernel], None] = lambda path, kernel: None) -> int:
        from jupyter_client.connect import write_connection_file

        if os.path.exists(self.local_file):
            msg = f"{self.local_file} exists; pass --local-file with a new path, or remove it"
            raise exc.UsageError(msg)
        written = False
        with SignalRelay() as signals:
            transport = self.new_transport(self.timeout)
            kernel = RemoteKernel(transport, kernel_id="existing", key="", signature_scheme="",
                                  python=self.options.python)
            try:
                t0 = time.monotonic()
                transport.connect()
                try:
                    event = kernel.watch(self.options.remote_file, self.timeout)
                except exc.KernelGoneError as e:
                    msg = (
                        f"no kernel to connect to at {self.options.remote_file} on {self.hostspec.label} "
                        f"({e}). Give the path of a running kernel's connection file on the remote "
                        f"(`jupyter --runtime-dir` there shows where Jupyter keeps them)"
                    )
                    raise exc.RemoteConnectionFileError(msg, host=self.hostspec.label) from e
                key = str(event.get("key") or "")
                if key:
                    redact(key)
                assert kernel.info is not None
                if kernel.info.socket:  # ours: attach to its keeper (interrupts, exit reports)
                    kernel.attach(transport, self.timeout)
                fname, local = write_connection_file(
                    fname=self.local_file, ip="127.0.0.1", key=key.encode(), transport="tcp",
                    signature_scheme=str(event.get("signature_scheme") or "hmac-sha256"),
                    kernel_name=str(event.get("kernel_name") or ""),
                )
                written = True
                os.chmod(fname, 0o600)
                carrier: Carrier
                if kernel.info.socket:
                    # Through its keeper, resumable, as its proxy does (its channels may be unix
                    # sockets that only the keeper reaches).
                    carrier = channels = Channels(local, host=self.hostspec.label)  # type: ignore[arg-type]
                    channels.listen()
                    channels.resume(kernel.open_stream(self.timeout), self.timeout)
                else:
                    remote_ip = str(event.get("ip") or "127.0.0.1")
                    forwards = [Forward(local_port=int(local[ch]), remote_port=kernel.info.ports[ch],  # type: ignore[literal-required]
                                        remote_host=remote_ip) for ch in CHANNELS]
                    tunnels = Tunnels(transport, forwards)
                    tunnels.open()
                    carrier = Forwarded(tunnels)
                signals.raise_on_stop = False
                self.log.info("up: connected to %s on %s in %.2f s; local connection file %s",
                              kernel.info.connection_file, self.hostspec.label, time.monotonic() - t0, fname)
                on_ready(fname, kernel)
                supervisor = Supervisor(
                    kernel=kernel, transport=transport, channels=carrier, new_transport=self.new_transport,
                    signals=signals, log=self.log, secret=key, grace=None, client_timeout=DEFAULT_CLIENT_TIMEOUT,
                    attach_timeout=self.timeout, owns_kernel=False,
                )
                supervisor.log.debug("%s", State.UP.value)
                return supervisor.run()
            except exc.Cancelled:
                return 0
            finally:
                kernel.close()
                transport.close()
                if written:
                    try:
                        os.unlink(self.local_file)
                    except FileNotFoundError:
                        pass
