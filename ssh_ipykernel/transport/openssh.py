"""The OpenSSH client backend: one shared ControlMaster connection per host (see master.py).

``connect()`` joins the master that serves this (ssh config, host), or starts it: a second
kernel, or a restart, costs no handshake. Remote commands run as ``ssh`` mux clients of the
master (each ends with the proxy: PR_SET_PDEATHSIG). Forwards are listened on by the proxy
itself and each accepted connection is relayed by the master (forwarder.py), so they too end
with the proxy, even one killed with SIGKILL. The transport keeps a control connection to the
master open (mux.py): its end-of-file is how the proxy learns at once that the master exited.
"""
from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
import zlib
from typing import Callable, List, Optional, Sequence, Tuple

from .. import exceptions as exc
from ..hosts import HostSpec
from ..log import KernelLogAdapter
from . import login as logins
from . import master as shared
from .master import die_with_parent
from .base import Forward, Transport, TransportOptions, end_process
from .forwarder import BindError, Forwarder
from .messages import classify_ssh_failure
from .mux import MUX_C_CLOSE_FWD, MUX_C_OPEN_FWD, MUX_FWD_LOCAL, PORT_STREAMLOCAL, MuxClient, MuxError
from .streamlocal import SocketSession

log = logging.getLogger(__name__)

# Unix socket paths are limited to 104 bytes on macOS (108 on Linux), and ssh first binds a
# temporary name: the ControlPath plus "." and 16 random characters.
MAX_SOCKET_PATH = 104 - 17
SOCKET_NAME_LENGTH = len("cm-") + 16
#: How long close(lost=True) waits for an answer through the master before declaring it dead.
PROBE_TIMEOUT = 3.0
#: A connection nobody has heard through for this long is checked (one round trip) before a new
#: kernel joins it: after a network change or a suspend it may be dead without knowing it yet,
#: and a kernel started over it would hang until its start-up timeout.
STALE_AFTER = 10.0
#: A login's connection (ssh-ipykernel login) is given up by ssh after this many keepalives
#: without an answer, one every LOGIN_ALIVE_INTERVAL s (2 min): long enough for TCP to come back
#: after a cut of a minute or more (its retransmissions back off: 25 s, 51 s, 102 s after the
#: cut), since a new connection would need a person. A ServerAliveInterval in the user's ssh
#: config for the host wins.
LOGIN_ALIVE_INTERVAL = 15
LOGIN_ALIVE_COUNT = 8


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


def connection_key(host: HostSpec, ssh_config: Optional[str]) -> str:
    """What identifies a shared connection: the host as given (alias, user@host:port ...) and
    the ssh config file that resolves it. 64 bits from two CRCs, not a cryptographic hash:
    nobody chooses these names against us (the directory is private), and hashlib would load
    OpenSSL into the proxy for this alone (3.6 MB resident of its ~22 MB)."""
    data = f"{ssh_config or ''}\0{host.spec}".encode()
    return "%08x%08x" % (zlib.crc32(data), zlib.crc32(data[::-1], 0x5EED))


def end_shared_connections(directory: Optional[str] = None, *, host: Optional[HostSpec] = None,
                           ssh_config: Optional[str] = None) -> List[int]:
    """End the shared connections (ControlMasters) of this user now, as ``ssh -O exit`` would:
    all of them, or with ``host`` the one for that host (as written) and ssh config. Kernels
    using one reconnect over a new connection. Returns the pids of the masters ended."""
    directory = directory or control_dir()
    if host is not None:
        names = [f"cm-{connection_key(host, ssh_config)}"]
    else:
        names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    ended = []
    for name in names:
        if not name.startswith("cm-") or "." in name:
            continue
        try:
            client = MuxClient(os.path.join(directory, name), timeout=5)
        except MuxError:
            continue
        try:
            pid = client.alive_check()
            client.terminate()
            ended.append(pid)
        except MuxError:
            pass
        finally:
            client.close()
        logins.remove_record(os.path.join(directory, name))
    return ended


def find_ssh() -> str:
    path = shutil.which("ssh")
    if not path:
        raise exc.SSHConnectionError(
            "the OpenSSH client (ssh) is not on PATH; install it (e.g. apt install "
            "openssh-client) or make it visible to Jupyter's environment"
        )
    return path


class OpenSSHTransport(Transport):
    """This proxy's use of the shared ControlMaster of its host."""

    def __init__(self, host: HostSpec, options: TransportOptions, *, name: str = "") -> None:
        super().__init__(host, options, name=name)
        self.ssh = find_ssh()
        self.control_path = os.path.join(control_dir(), f"cm-{connection_key(host, options.ssh_config)}")
        self.log = KernelLogAdapter(log, {"host": host.label, "kernel": name or "-"})
        self.mux: Optional[MuxClient] = None
        self.master_pid = 0
        self._sessions: List[subprocess.Popen] = []
        self._forwarder: Optional[Forwarder] = None
        self._heard = 0.0  # monotonic time of the last confirm_alive() that touched the file
        self._closed = False
        self._existing_only = False  # join_existing(): sessions may never make a connection

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
        # ControlPersist=0 would mean "forever": never that.
        persist = max(1, int(round(self.options.persist)))
        return self.common_args() + [
            "-M", "-N", "-T",
            "-o", "ControlMaster=yes",
            "-o", f"ControlPersist={persist}",
            "-o", "PermitLocalCommand=yes",
            "-o", f"LocalCommand=echo {shared.READY_MARKER}",
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
        """A mux client of the master; BatchMode so a missing master can never prompt. After
        join_existing() a client whose master is gone (or refuses the session) cannot fall back
        to a login of its own: its "connection" is a ProxyCommand that fails at once."""
        guard = ["-o", "ProxyCommand=false", "-o", "ConnectTimeout=1"] if self._existing_only else []
        return self.common_args() + ["-o", "ControlMaster=no", "-o", "BatchMode=yes", *guard, *extra]

    # -- Transport ----------------------------------------------------------------------------------
    def connect(self) -> None:
        timeout = self.options.connect_timeout + 5  # ssh's own ConnectTimeout should fire first
        deadline = time.monotonic() + timeout
        with shared.creation_lock(self.control_path + ".lock", deadline, host=self.host.label):
            mux = shared.connect_mux(self.control_path)
            if mux is not None and self._stale() and not self._still_answers(mux):
                mux = None
            if mux is None:
                shared.remove_stale(self.control_path)
                self._start_master(max(1.0, deadline - time.monotonic()))
                mux = shared.connect_mux(self.control_path)
                if mux is None:
                    msg = f"the ssh master for {self.host.label} started but its control socket does not answer"
                    raise exc.SSHConnectionError(msg, host=self.host.label)
                self._heard = 0.0
                self.confirm_alive()  # it just logged in
            else:
                self.reused = True
        try:
            self.master_pid = mux.alive_check()
        except MuxError as e:
            mux.close()
            msg = f"the shared ssh connection to {self.host.label} does not answer: {e}"
            raise exc.ConnectionLostError(msg, host=self.host.label) from e
        self.mux = mux
        self.log.debug("%s ssh master pid %d (%s)", "reusing" if self.reused else "started",
                       self.master_pid, self.control_path)

    def join_existing(self, timeout: float) -> bool:
        """Use the host's shared connection if one is up, and nothing else: no master is started
        or waited for, nobody is asked for a password, and sessions started over it never make
        a connection of their own (``status``, which must not log in anywhere). False: no
        master answers within ``timeout``."""
        try:
            mux = MuxClient(self.control_path, timeout=timeout)
        except MuxError:
            return False
        try:
            self.master_pid = mux.alive_check(timeout=timeout)
        except MuxError:
            mux.close()
            return False
        self.mux = mux
        self.reused = True
        self._existing_only = True
        return True

    def _stale(self) -> bool:
        try:
            return time.time() - os.stat(self.control_path + ".alive").st_mtime > STALE_AFTER
        except OSError:
            return True

    def _still_answers(self, mux: MuxClient) -> bool:
        """One round trip through a connection nobody has used lately; a dead one is ended."""
        try:
            pid = mux.alive_check(timeout=2.0)
        except MuxError:
            mux.close()  # hung: its socket is replaced by the new master's
            return False
        if mux.probe(PROBE_TIMEOUT):
            self.confirm_alive()
            return True
        mux.close()
        if logins.is_login_master(self.control_path, pid):
            raise self._login_master_silent(pid)
        self.log.info("the shared connection to %s does not answer; starting a new one", self.host.label)
        shared.retire(self.control_path, pid, is_ours=self._is_our_master, logger=self.log)
        return False

    def _login_master_silent(self, pid: int) -> exc.ConnectionTimeoutError:
        """A connection opened by ``login`` that does not answer (yet): never replaced, since a
        new one needs a person; the caller tries again over it until ssh itself gives up."""
        msg = (f"the connection to {self.host.label} opened by `ssh-ipykernel login` (ssh pid {pid}) does "
               f"not answer yet; keeping it (a new one would need a new login) and trying again")
        return exc.ConnectionTimeoutError(msg, host=self.host.label)

    @property
    def login_master(self) -> bool:
        """Whether the connection this transport joined was opened by ``ssh-ipykernel login``."""
        return bool(self.master_pid) and logins.is_login_master(self.control_path, self.master_pid)

    def wait_for_login(self, deadline: float, wake_fd: Optional[int] = None) -> Optional[float]:
        """Until somebody has logged in (a master answers on the control socket): the seconds
        since its connection came up; None once ``deadline`` (monotonic) passes. Never makes a
        connection itself; ``wake_fd`` readable ends the wait (None)."""
        return logins.wait_for_master(self.control_path, deadline, wake_fd)

    def login_keepalive(self) -> List[str]:
        """ServerAlive options for a login's master: the user's own if their ssh config sets
        them for this host, else LOGIN_ALIVE_INTERVAL x LOGIN_ALIVE_COUNT. They decide how long
        a silent server is waited for before ssh gives the connection (and the login) up."""
        argv = [self.ssh] + (["-F", self.options.ssh_config] if self.options.ssh_config else [])
        argv += self.host.ssh_args() + ["-G", "--", self.host.host]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        conf = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        if conf.get("serveraliveinterval", "0") not in ("", "0"):
            return []
        return ["-o", f"ServerAliveInterval={LOGIN_ALIVE_INTERVAL}", "-o", f"ServerAliveCountMax={LOGIN_ALIVE_COUNT}"]

    def login_argv(self, persist: Optional[float], keepalive: Sequence[str] = ()) -> List[str]:
        """The master ``ssh-ipykernel login`` runs on the person's terminal."""
        timeout = max(1, int(round(self.options.connect_timeout)))
        return self.common_args() + [
            "-M", "-N", "-T",
            "-o", "ControlMaster=yes",
            # ControlPersist=yes: until logout, or until ssh gives up on the server.
            "-o", f"ControlPersist={'yes' if persist is None else max(1, int(round(persist)))}",
            "-o", "BatchMode=no",
            # A person is here, but host keys are still never accepted on their behalf.
            "-o", "StrictHostKeyChecking=yes",
            "-o", "PermitLocalCommand=no",
            "-o", f"ConnectTimeout={timeout}",
            *keepalive,
            "-o", "ClearAllForwardings=yes",
            # Banners and errors (ssh's INFO); prompts go to the terminal whatever the level.
            "-o", "LogLevel=INFO",
        ] + self.destination()

    def login(self, persist: Optional[float], on_output: Callable[[str], None] = lambda text: None,
              ) -> Tuple[logins.LoginRecord, bool]:
        """Open the host's shared connection with a person at the terminal (``ssh-ipykernel
        login``); (its record, False), or (the record, True) if one that answers is up already."""
        logins.needs_terminal()
        deadline = time.monotonic() + self.options.connect_timeout + 5
        with shared.creation_lock(self.control_path + ".lock", deadline, host=self.host.label):
            pid = logins.end_stale(self.control_path, is_ours=self._is_our_master)
        if pid is not None:
            record = logins.read_record(self.control_path)
            if record is None or record.pid != pid:  # opened by a kernel (the host needs no person)
                record = logins.LoginRecord(host=self.host.spec, ssh_config=self.options.ssh_config,
                                            started=time.time(), persist=None, pid=pid)
            return record, True
        argv = self.login_argv(persist, self.login_keepalive())
        record = logins.run_login(argv, control_path=self.control_path, host=self.host.label,
                                  spec=self.host.spec, ssh_config=self.options.ssh_config,
                                  timeout=self.options.connect_timeout, persist=persist, on_output=on_output)
        self._heard = 0.0
        self.confirm_alive()
        return record, False

    def confirm_alive(self) -> None:
        now = time.monotonic()
        if now - self._heard < 2.0:
            return
        self._heard = now
        path = self.control_path + ".alive"
        try:
            os.utime(path)
        except FileNotFoundError:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError:
                pass
        except OSError:
            pass

    def _start_master(self, timeout: float) -> None:
        env = dict(os.environ, SSH_ASKPASS_REQUIRE="never")
        env.pop("DISPLAY", None)  # no ssh-askpass window popping up from a kernel
        try:
            shared.start_master(self.master_argv(), timeout, env)
        except shared.MasterFailed as e:
            raise classify_ssh_failure(
                e.output + ("\ntimed out" if e.timed_out else ""),
                host=self.host.label, spec=self.host.spec, ssh_config=self.options.ssh_config,
                timeout=self.options.connect_timeout,
            ) from None

    def start_command(self, command: str) -> subprocess.Popen:
        argv = self.client_argv(
            "-T", "-o", "RemoteCommand=none", "-o", "RequestTTY=no", *self.destination(), command
        )
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._sessions = [p for p in self._sessions if p.poll() is None] + [proc]
        return proc

    def forward(self, forwards: Sequence[Forward]) -> None:
        if self.mux is None:
            raise exc.TunnelError(f"not connected to {self.host.label}", host=self.host.label)
        if self._forwarder is None:
            self._forwarder = Forwarder(self.control_path)
        try:
            self._forwarder.add(forwards)
        except BindError as e:
            raise e.tunnel_error(self.host.label) from None

    def cancel(self, forwards: Sequence[Forward]) -> None:
        if self._forwarder is not None:
            self._forwarder.remove(forwards)

    def open_unix_stream(self, path: str, timeout: float) -> Optional[SocketSession]:
        """A connection to the unix socket ``path`` on the remote, through a local forward of
        the master from a unix socket of ours (``-L /ours:/path``, asked over the control
        socket), which is removed once the far end has spoken: the connection lives on, and
        nothing of it stays in the master. The far end must speak first (the keeper greets
        every client): removing the forward while the master is still opening the channel
        would cut it. (OpenSSH 9.2's stdio forward, ``ssh -W``, cannot reach a unix socket: it
        sends the path as a host name.) A server that refuses the channel makes the master
        close our end: None then, as for any failure."""
        if self.mux is None:
            return None
        local = os.path.join(os.path.dirname(self.control_path), f"st-{os.urandom(6).hex()}")
        body = MuxClient.forward_body(MUX_FWD_LOCAL, local, PORT_STREAMLOCAL, path, PORT_STREAMLOCAL)
        try:
            self.mux.request(MUX_C_OPEN_FWD, body, timeout)
        except MuxError as e:
            self.log.debug("no stream to %s: %s", path, e)
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        greeted = False
        try:
            sock.settimeout(timeout)
            sock.connect(local)
            if select.select([sock], [], [], timeout)[0]:
                greeted = bool(sock.recv(1, socket.MSG_PEEK))
        except OSError as e:
            self.log.debug("no stream to %s: %s", path, e)
        finally:
            try:
                self.mux.request(MUX_C_CLOSE_FWD, body, timeout)
            except MuxError as e:
                self.log.debug("could not remove the forward %s: %s", local, e)
            try:
                os.unlink(local)
            except OSError:
                pass
        if not greeted:
            sock.close()
            self.log.debug("no stream to %s: refused, or nobody answered", path)
            return None
        session = SocketSession(sock, lambda: None, args=f"-L {local}:{path}")
        self._sessions = [p for p in self._sessions if p.poll() is None] + [session]  # type: ignore[list-item]
        return session

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
        return self.mux is not None and not self.mux.poll_eof()

    def fileno(self) -> Optional[int]:
        return None if self.mux is None else self.mux.fileno()

    def drain(self) -> str:
        """The master runs in the background with its output on /dev/null: nothing to say."""
        if self.mux is not None:
            self.mux.poll_eof()
        return ""

    def close(self, *, lost: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            forwarder.close()
        for proc in self._sessions:
            end_process(proc)
        self._sessions = []
        mux, self.mux = self.mux, None
        if mux is None:
            return
        try:
            if lost and not mux.poll_eof():
                if mux.probe(PROBE_TIMEOUT):
                    self.log.info("the shared connection to %s still answers; keeping it", self.host.label)
                elif logins.is_login_master(self.control_path, self.master_pid):
                    self.log.info("the connection to %s does not answer; keeping it all the same: it was "
                                  "opened by `ssh-ipykernel login`, a new one would need a new login "
                                  "(ssh ends it itself if the server stays silent)", self.host.label)
                else:
                    shared.retire(self.control_path, self.master_pid, is_ours=self._is_our_master,
                                  logger=self.log)
        finally:
            mux.close()

    def _is_our_master(self, pid: int) -> bool:
        """Whether ``pid`` still runs an ssh master on our control path (Linux: /proc)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f"ControlPath={self.control_path}".encode() in f.read()
        except OSError:
            return False
