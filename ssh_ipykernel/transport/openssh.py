"""The OpenSSH client backend, driven with pexpect over a ControlMaster connection.

The master (``ssh -M -N``) runs on a pty so pexpect sees every prompt and error ssh prints and
turns them into typed errors instead of hanging on a question nobody can answer. Readiness is
signalled by a LocalCommand that echoes a marker: ssh runs it once authentication is done and
the control socket listens, so no polling is needed. Remote commands and ``-O forward`` then go
through the master's socket and cost no new handshake.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

import pexpect

from .. import exceptions as exc
from ..hosts import HostSpec
from .base import Forward, Transport, TransportOptions
from .messages import PROMPT_RE, classify_ssh_failure

log = logging.getLogger(__name__)

READY_MARKER = "__ssh_ipykernel_master_ready__"
# Unix socket paths are limited to 104 bytes on macOS (108 on Linux), and ssh first binds a
# temporary name: the ControlPath plus "." and 16 random characters.
MAX_SOCKET_PATH = 104 - 17
SOCKET_NAME_LENGTH = len("cm-") + 16


def die_with_parent() -> None:
    """preexec_fn for ssh children: end with the proxy, even when it is killed with SIGKILL.

    The children run in their own session (so Jupyter's killpg for an interrupt misses them),
    which also means nothing else would stop them if the proxy died: a leaked master would keep
    the kernel's local ports bound and the remote kernel running.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: best effort only
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def control_dir() -> str:
    """A private (0700) directory for control sockets: under Jupyter's runtime dir if the socket
    path fits the unix limit there, else under the system temp dir."""
    base = ""
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        base = os.path.join(jupyter_runtime_dir(), "ssh_ipykernel")
    except ImportError:  # pragma: no cover - jupyter_core comes with jupyter_client
        pass
    if not base or len(base) + 1 + SOCKET_NAME_LENGTH > MAX_SOCKET_PATH:
        base = os.path.join(tempfile.gettempdir(), f"ssh_ipykernel-{os.getuid()}")
    os.makedirs(base, mode=0o700, exist_ok=True)
    st = os.stat(base)
    if st.st_uid != os.getuid():
        msg = f"{base} belongs to another user; set TMPDIR or JUPYTER_RUNTIME_DIR to a private directory"
        raise exc.UsageError(msg)
    if st.st_mode & 0o077:
        os.chmod(base, 0o700)
    return base


def find_ssh() -> str:
    path = shutil.which("ssh")
    if not path:
        raise exc.SSHConnectionError(
            "the OpenSSH client (ssh) is not on PATH; install it (e.g. apt install "
            "openssh-client) or make it visible to Jupyter's environment"
        )
    return path


class OpenSSHTransport(Transport):
    """One ControlMaster connection owned by this proxy."""

    def __init__(self, host: HostSpec, options: TransportOptions, *, name: str = "") -> None:
        super().__init__(host, options, name=name)
        self.ssh = find_ssh()
        digest = hashlib.sha1(f"{host.spec}\0{name}\0{os.getpid()}".encode()).hexdigest()[:16]
        self.control_path = os.path.join(control_dir(), f"cm-{digest}")
        self.master: Optional[pexpect.spawn] = None
        self._output = b""
        self._closed = False

    # -- argv -------------------------------------------------------------------------------------
    def common_args(self) -> List[str]:
        """Options every ssh invocation of this connection takes."""
        args = [self.ssh]
        if self.options.ssh_config:
            args += ["-F", self.options.ssh_config]
        args += ["-o", f"ControlPath={self.control_path}"]
        args += self.host.ssh_args()
        return args

    def destination(self) -> List[str]:
        # "--" so that nothing after it can be read as an option.
        return ["--", self.host.host]

    def master_argv(self) -> List[str]:
        timeout = max(1, int(round(self.options.connect_timeout)))
        return self.common_args() + [
            "-M", "-N", "-T",
            "-o", "ControlMaster=yes",
            "-o", "ControlPersist=no",
            "-o", "PermitLocalCommand=yes",
            "-o", f"LocalCommand=echo {READY_MARKER}",
            "-o", f"ConnectTimeout={timeout}",
            "-o", f"ServerAliveInterval={self.options.server_alive_interval}",
            "-o", f"ServerAliveCountMax={self.options.server_alive_count_max}",
            # Forwards in the user's config for this host would collide between kernels.
            "-o", "ClearAllForwardings=yes",
            # Errors are what we classify: a LogLevel QUIET in the user's config would hide them,
            # and INFO adds "Permanently added ..." noise to every kernel start.
            *(["-v"] if self.options.verbose else ["-o", "LogLevel=ERROR"]),
        ] + self.destination()

    def client_argv(self, *extra: str) -> List[str]:
        """A mux client of the master; BatchMode so a missing master can never prompt."""
        return self.common_args() + ["-o", "ControlMaster=no", "-o", "BatchMode=yes", *extra]

    # -- Transport ----------------------------------------------------------------------------------
    def connect(self) -> None:
        argv = self.master_argv()
        log.debug("starting ssh master: %s", " ".join(argv))
        env = dict(os.environ, SSH_ASKPASS_REQUIRE="never")
        env.pop("DISPLAY", None)  # no ssh-askpass window popping up from a kernel
        self.master = pexpect.spawn(
            argv[0], argv[1:], env=env, echo=False, preexec_fn=die_with_parent, timeout=None
        )
        timeout = self.options.connect_timeout + 5  # ssh's own ConnectTimeout should fire first
        try:
            index = self.master.expect([READY_MARKER, PROMPT_RE, pexpect.EOF, pexpect.TIMEOUT], timeout=timeout)
        except BaseException:
            self.close()
            raise
        output = (self.master.before or b"") + (
            self.master.after if isinstance(self.master.after, bytes) else b""
        )
        if index == 0:
            return
        if index == 2:
            self.master.close()
        text = output.decode("utf-8", "replace")
        self.close()
        raise classify_ssh_failure(
            text + ("\ntimed out" if index == 3 else ""),
            host=self.host.label, spec=self.host.spec, ssh_config=self.options.ssh_config,
            timeout=self.options.connect_timeout,
        )

    def start_command(self, command: str) -> subprocess.Popen:
        argv = self.client_argv(
            "-T", "-o", "RemoteCommand=none", "-o", "RequestTTY=no", *self.destination(), command
        )
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def _control(self, op: str, forwards: Sequence[Forward], timeout: float = 10.0) -> subprocess.CompletedProcess:
        args: List[str] = ["-O", op]
        for fwd in forwards:
            args += ["-L", fwd.spec()]
        argv = self.client_argv(*args, *self.destination())
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            start_new_session=True,
        )

    def forward(self, forwards: Sequence[Forward]) -> None:
        result = self._control("forward", forwards)
        if result.returncode == 0:
            return
        self.cancel(forwards)
        from ..tunnels import busy_ports

        busy = busy_ports([(f.local_host, f.local_port) for f in forwards])
        if busy:
            ports = ", ".join(str(p) for p in busy)
            msg = (
                f"local port {ports} is already in use, so the kernel's channel cannot be forwarded "
                f"there. Another program (or a kernel that did not shut down) holds it; restart the "
                f"kernel to get new ports, or find the holder with `ss -ltnp | grep {busy[0]}`"
            )
            raise exc.TunnelError(msg, host=self.host.label)
        msg = f"ssh could not set up the port forwards to {self.host.label}"
        raise exc.TunnelError(msg, host=self.host.label, detail=result.stderr + self.drain())

    def cancel(self, forwards: Sequence[Forward]) -> None:
        if self.alive():
            try:
                self._control("cancel", forwards, timeout=5.0)
            except subprocess.TimeoutExpired:
                log.debug("cancelling forwards timed out")

    def probe_address(self) -> Optional[Tuple[str, int]]:
        argv = [self.ssh] + (["-F", self.options.ssh_config] if self.options.ssh_config else [])
        argv += self.host.ssh_args() + ["-G", "--", self.host.host]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        conf = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        if conf.get("proxyjump", "none") != "none" or conf.get("proxycommand", "none") != "none":
            return None
        try:
            port = int(conf.get("port", "22"))
            infos = socket.getaddrinfo(conf.get("hostname", self.host.host), port, type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            return None
        return (str(infos[0][4][0]), port) if infos else None

    def alive(self) -> bool:
        return self.master is not None and self.master.isalive()

    def fileno(self) -> Optional[int]:
        if self.master is None or self.master.closed:
            return None
        return self.master.child_fd

    def drain(self) -> str:
        """Read the master's pending output without blocking (its warnings and errors)."""
        if self.master is None or self.master.closed:
            return ""
        chunks = []
        while True:
            try:
                chunks.append(self.master.read_nonblocking(65536, timeout=0))
            except (pexpect.TIMEOUT, pexpect.EOF, OSError, ValueError):
                break
        return b"".join(chunks).decode("utf-8", "replace")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        master, self.master = self.master, None
        if master is not None:
            if master.isalive():
                try:
                    subprocess.run(
                        self.client_argv("-O", "exit", *self.destination()),
                        stdin=subprocess.DEVNULL, capture_output=True, timeout=5,
                        start_new_session=True,
                    )
                except subprocess.TimeoutExpired:
                    pass
                deadline = time.monotonic() + 2
                while master.isalive() and time.monotonic() < deadline:
                    time.sleep(0.01)
            master.close(force=True)
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
