"""The paramiko backend: SSH in this Python process, for machines without an OpenSSH client.

One connection per proxy (nothing to share it with: there is no ControlMaster), made from the
user's ssh config as far as paramiko can follow it (pmconfig.py): HostName, User, Port,
IdentityFile, ProxyJump (nested paramiko transports) and ProxyCommand. Keys come from the agent
and the identity files; there is never a prompt (a kernel has no terminal), and host keys are
checked strictly against known_hosts. Remote commands and forwards are channels
(pmchannel.py); the forwards' listeners live in this process, so they end with it.

paramiko is imported only when this backend is chosen: the default proxy must not pay for it.
"""
from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence, Tuple

from .. import exceptions as exc
from ..hosts import HostSpec
from ..log import KernelLogAdapter
from . import failures
from .base import Forward, Transport, TransportOptions, end_process
from .forwarder import BindError
from .master import die_with_parent

try:
    from . import pmconfig  # imports paramiko (see pmconfig._import_paramiko)
except ImportError as e:  # pragma: no cover - paramiko is a dependency of the package
    raise exc.UsageError("the paramiko transport needs paramiko: pip install paramiko, "
                         "or use --transport openssh") from e

import paramiko  # noqa: E402 - already imported by pmconfig, without invoke

from .pmchannel import ChannelForwarder, ChannelProcess, _Relay  # noqa: E402
from .streamlocal import SocketSession  # noqa: E402

log = logging.getLogger(__name__)

#: Receive window of every channel. OpenSSH uses 2 MB, which caps one channel at 2 MB per round
#: trip. Measured (20 MB printed by a cell, +50 ms RTT): 2 MB 26.8 MB/s, 8 MB 47.5, 16 MB 52.2.
#: paramiko buffers at most this much per channel, and our relay threads keep reading.
WINDOW_SIZE = 8 * 1024 * 1024
#: Largest data packet the server may send us. paramiko's default, 32 KB, costs Python work per
#: packet: 20 MB printed by a cell on the LAN, median of 5 (2 CPUs): 32 KB 45.7-52.2 MB/s,
#: 128 KB 56.6-57.2, 256 KB 54.3-60.8, 1 MB 46.6; over +50 ms RTT the window decides (no change).
#: 128 KB keeps well under OpenSSH's 256 KB limit on a whole packet.
MAX_PACKET = 128 * 1024


class ParamikoTransport(Transport):
    """This proxy's own paramiko connection to its host."""

    def __init__(self, host: HostSpec, options: TransportOptions, *, name: str = "") -> None:
        super().__init__(host, options, name=name)
        self.log = KernelLogAdapter(log, {"host": host.label, "kernel": name or "-"})
        self.config = pmconfig.load_config(options.ssh_config)
        self.settings = pmconfig.resolve(host, self.config, config_path=options.ssh_config)
        self.transport: Optional[paramiko.Transport] = None
        self._hops: List[paramiko.Transport] = []  # ProxyJump connections, nearest first
        self._sessions: List[ChannelProcess] = []
        self._forwarder: Optional[ChannelForwarder] = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._closed = False

    # -- connecting ---------------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            self.transport = self._login(self.settings, self._socket_for(self.settings))
        except BaseException:
            self._close_connections()
            raise
        self.transport.set_keepalive(self.options.server_alive_interval)
        # The supervisor selects on our descriptor: it becomes readable when the connection ends.
        threading.Thread(target=self._watch, args=(self.transport,), daemon=True, name="sik-pm-watch").start()
        self.log.debug("paramiko connection to %s@%s:%d up", self.settings.user, self.settings.hostname,
                       self.settings.port)

    def _socket_for(self, settings: pmconfig.HostSettings):  # -> a socket-like object for paramiko
        timeout = self.options.connect_timeout
        if settings.proxy_jump:
            first = pmconfig.resolve_hop(settings.proxy_jump[0], self.config, config_path=self.options.ssh_config)
            hop = self._login(first, self._socket_for(first))
            self._hops.append(hop)
            for spec in settings.proxy_jump[1:]:
                nxt = pmconfig.resolve_hop(spec, self.config, config_path=self.options.ssh_config)
                hop = self._login(nxt, self._channel_to(hop, nxt))
                self._hops.append(hop)
            for t in self._hops:
                t.set_keepalive(self.options.server_alive_interval)
            return self._channel_to(hop, settings)
        if settings.proxy_command:
            try:
                return _ProxyCommand(settings.proxy_command)
            except (paramiko.SSHException, OSError) as e:
                msg = f"the ProxyCommand for {settings.alias} could not be started: {e}"
                raise exc.SSHConnectionError(msg, host=settings.alias) from e
        try:
            sock = socket.create_connection((settings.hostname, settings.port), timeout=timeout)
        except OSError as e:
            raise failures.socket_error(e, host=settings.alias, spec=settings.alias, hostname=settings.hostname,
                                        port=settings.port, timeout=timeout) from None
        # Interactive traffic: a ZeroMQ message must not wait for the previous one's ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _channel_to(self, hop: paramiko.Transport, settings: pmconfig.HostSettings) -> paramiko.Channel:
        try:
            return hop.open_channel("direct-tcpip", (settings.hostname, settings.port), ("127.0.0.1", 0),
                                    timeout=self.options.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            msg = (f"the jump host could not connect to {settings.hostname}:{settings.port} "
                   f"for {settings.alias}: {e}")
            raise exc.SSHConnectionError(msg, host=settings.alias) from e

    def _login(self, settings: pmconfig.HostSettings, sock) -> paramiko.Transport:
        """Handshake, host key check and authentication over ``sock``."""
        timeout = self.options.connect_timeout
        t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET)
        t.banner_timeout = t.handshake_timeout = t.auth_timeout = timeout
        known = pmconfig.load_known_hosts(settings.known_hosts)
        opts = t.get_security_options()
        opts.key_types = pmconfig.preferred_key_types(known.types_for(settings.known_hosts_name), opts.key_types)
        try:
            t.start_client(timeout=timeout)
            pmconfig.check_host_key(settings, t.get_remote_server_key(), known)
            self._authenticate(t, settings)
        except exc.SSHKernelError:
            t.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as e:
            t.close()
            raise failures.login_error(e, host=settings.alias, hostname=settings.hostname, timeout=timeout) from None
        return t

    def _authenticate(self, t: paramiko.Transport, settings: pmconfig.HostSettings) -> None:
        agent = paramiko.Agent()  # no keys if there is no SSH_AUTH_SOCK
        try:
            self._try_keys(t, settings, *keys_to_offer(settings, agent))
        finally:
            agent.close()  # one per login: a reconnecting proxy must not pile up agent sockets

    def _try_keys(self, t: paramiko.Transport, settings: pmconfig.HostSettings, keys: list, notes: List[str]) -> None:
        for key in keys:
            try:
                t.auth_publickey(settings.user, key)
            except paramiko.BadAuthenticationType as e:
                notes.append(f"the server does not take keys (it allows: {', '.join(e.allowed_types)})")
                if {"keyboard-interactive", "password"} & set(e.allowed_types):
                    raise exc.AuthenticationError(
                        f"{settings.alias} wants a password or one-time code typed by a person, which the "
                        f"paramiko transport cannot ask for or share between kernels: use --transport openssh "
                        f"and log in once with `ssh-ipykernel login {self.host.spec}` (the kernels of the "
                        f"host then share that connection)",
                        host=settings.alias, detail="\n".join(notes), detail_label="detail",
                    ) from None
                break
            except paramiko.AuthenticationException:
                continue
            if t.is_authenticated():
                return
        tried = f"{len(keys)} key(s) tried" if keys else "no usable key found (agent, IdentityFile, ~/.ssh/id_*)"
        raise exc.AuthenticationError(
            f"{settings.alias} refused authentication as {settings.user}: {tried}. Check the user "
            f"name (user@host or User in ssh config) and that your public key is in "
            f"~/.ssh/authorized_keys there; a key with a passphrase must be loaded into your agent "
            f"with ssh-add (a kernel cannot ask for it)",
            host=settings.alias, detail="\n".join(notes), detail_label="detail",
        )

    def _watch(self, transport: paramiko.Transport) -> None:
        transport.join()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # closed: nobody is watching any more

    # -- Transport ----------------------------------------------------------------------------------
    def start_command(self, command: str) -> ChannelProcess:  # type: ignore[override]
        if self.transport is None or not self.transport.is_active():
            raise exc.ConnectionLostError(f"not connected to {self.host.label}", host=self.host.label)
        try:
            channel = self.transport.open_session(window_size=WINDOW_SIZE, timeout=self.options.connect_timeout)
            proc = ChannelProcess(channel, command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            msg = f"the connection to {self.host.label} refused a new session: {e}"
            raise exc.ConnectionLostError(msg, host=self.host.label) from e
        self._sessions = [p for p in self._sessions if p.poll() is None] + [proc]
        return proc

    def forward(self, forwards: Sequence[Forward]) -> None:
        if self.transport is None:
            raise exc.TunnelError(f"not connected to {self.host.label}", host=self.host.label)
        if self._forwarder is None:
            self._forwarder = ChannelForwarder(self.transport, window_size=WINDOW_SIZE)
        try:
            self._forwarder.add(forwards)
        except BindError as e:
            raise e.tunnel_error(self.host.label, detail_label="detail") from None

    def cancel(self, forwards: Sequence[Forward]) -> None:
        if self._forwarder is not None:
            self._forwarder.remove(forwards)

    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def fileno(self) -> Optional[int]:
        return None if self._closed else self._wake_r.fileno()

    def drain(self) -> str:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass
        return ""

    def open_unix_stream(self, path: str, timeout: float) -> Optional[SocketSession]:
        """A direct-streamlocal channel to ``path``, relayed to one end of a socketpair by two
        threads (as the forwards are); None if the server refuses it."""
        if self.transport is None or not self.transport.is_active():
            return None
        try:
            channel = open_streamlocal_channel(self.transport, path, window_size=WINDOW_SIZE, timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as e:
            # AttributeError: a paramiko whose internals differ (see open_streamlocal_channel).
            self.log.debug("no stream to %s: %s", path, e)
            return None
        ours, theirs = socket.socketpair()
        relay = _Relay(theirs, channel, lambda relay: None, None)
        relay.start()
        session = SocketSession(ours, relay.close, args=f"direct-streamlocal {path}")
        self._sessions = [p for p in self._sessions if p.poll() is None] + [session]  # type: ignore[list-item]
        return session

    def probe_address(self) -> Optional[Tuple[str, int]]:
        s = self.settings
        if s.proxy_jump or s.proxy_command:
            return None
        try:
            infos = socket.getaddrinfo(s.hostname, s.port, type=socket.SOCK_STREAM)
        except OSError:
            return None
        return (str(infos[0][4][0]), s.port) if infos else None

    def close(self, *, lost: bool = False) -> None:
        """Nothing is shared: ``lost`` changes nothing, the connection is always ended."""
        if self._closed:
            return
        self._closed = True
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            forwarder.close()
        for proc in self._sessions:
            proc.terminate()
        self._sessions = []
        self._close_connections()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _close_connections(self) -> None:
        transport, self.transport = self.transport, None
        for t in ([transport] if transport else []) + self._hops[::-1]:
            try:
                t.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass
        self._hops = []


def keys_to_offer(settings: pmconfig.HostSettings, agent: "paramiko.Agent") -> Tuple[list, List[str]]:
    """The keys to offer, in ssh's order: the agent's, then the identity files'.

    With IdentitiesOnly, as with ssh, only the agent's keys that are one of the identity
    files (a key with a passphrase is usable that way: loaded with ssh-add, named by
    IdentityFile, its public key in a .pub file beside it or, in OpenSSH's format, in the file)."""
    notes: List[str] = []
    files = settings.identity_files or [os.path.expanduser(p) for p in pmconfig.DEFAULT_IDENTITIES]
    from_files: list = []
    public: set = set()  # the identity files' public keys, as the agent lists them
    for path in files:
        pub = _public_blob(path)
        if pub:
            public.add(pub)
        if not os.path.isfile(path):
            continue
        try:
            key = paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError):
            # TypeError: what cryptography raises for an OpenSSH-format key with a passphrase.
            notes.append(f"{path} has a passphrase: load it with ssh-add")
            continue
        except (paramiko.SSHException, ValueError, OSError) as e:
            notes.append(f"{path}: cannot use it ({e})")
            continue
        from_files.append(key)
        public.add(key.asbytes())
    from_agent: list = []
    try:
        from_agent = list(agent.get_keys())
    except (paramiko.SSHException, OSError) as e:
        notes.append(f"ssh agent: {e}")
    if settings.identities_only:
        from_agent = [key for key in from_agent if key.asbytes() in public]
    agent_blobs = {key.asbytes() for key in from_agent}
    return from_agent + [k for k in from_files if k.asbytes() not in agent_blobs], notes


def _public_blob(path: str) -> Optional[bytes]:
    """The public key of the identity file ``path``, without its passphrase, as the agent lists
    it: from ``path.pub`` (``type base64 [comment]``), else from the private key file itself
    when it is in OpenSSH's format, which keeps the public key in clear. None if neither."""
    try:
        with open(path + ".pub", encoding="ascii", errors="replace") as f:
            fields = f.read(16384).split()
        if len(fields) >= 2:
            return base64.b64decode(fields[1], validate=True)
    except (OSError, ValueError):
        pass
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(65536)
        body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----", 1)[1].split("-----END", 1)[0]
        data = base64.b64decode("".join(body.split()), validate=True)
    except (OSError, ValueError, IndexError):
        return None
    # openssh-key-v1: magic, then the strings cipher, kdf, kdf options, uint32 key count, then
    # the first public key as a string.
    magic = b"openssh-key-v1\0"
    if not data.startswith(magic):
        return None
    at = len(magic)
    try:
        for _ in range(3):
            at += 4 + int.from_bytes(data[at:at + 4], "big")
        at += 4
        size = int.from_bytes(data[at:at + 4], "big")
        blob = data[at + 4:at + 4 + size]
    except ValueError:
        return None
    return blob if size and len(blob) == size else None


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand, started as ssh starts one and as our other children run.

    Through ``sh -c 'exec ...'`` (ssh runs it with the user's shell: pipes and quotes in the
    config work), in its own session so that Jupyter's killpg for an interrupt does not end the
    connection, and ending with the proxy even when the proxy is killed with SIGKILL. Its stderr
    goes to the proxy's (Jupyter's log), as ssh passes it on.
    """

    def __init__(self, command_line: str) -> None:  # no super().__init__(): it starts the process
        posix = sys.platform != "win32"
        self.cmd = ["/bin/sh", "-c", "exec " + command_line] if posix else command_line.split()
        self.process = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, bufsize=0,
            start_new_session=posix, preexec_fn=die_with_parent if posix else None,
        )
        self.timeout = None

    def close(self) -> None:
        end_process(self.process, 2.0)
        for stream in (self.process.stdin, self.process.stdout):
            if stream:
                stream.close()


def open_streamlocal_channel(transport: paramiko.Transport, path: str, *, window_size: Optional[int] = None,
                             timeout: float = 10.0) -> paramiko.Channel:
    """Open a ``direct-streamlocal@openssh.com`` channel to the unix socket ``path`` on the server
    (OpenSSH's PROTOCOL, section 2.4: socket path, then a reserved string and uint32).

    ``Transport.open_channel`` writes the extra fields only for the channel kinds it knows, so this
    is that method with this kind's fields: the same (private) attributes it uses, which paramiko
    has kept for a decade; should they change, the AttributeError makes the caller fall back on
    the remote relay. Raises SSHException (paramiko's ChannelException) if the server refuses.
    """
    from paramiko.channel import Channel
    from paramiko.common import cMSG_CHANNEL_OPEN
    from paramiko.message import Message

    if not transport.active:
        raise paramiko.SSHException("SSH session not active")
    with transport.lock:
        window = transport._sanitize_window_size(window_size)
        packet = transport._sanitize_packet_size(None)
        chanid = transport._next_channel()
        m = Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string("direct-streamlocal@openssh.com")
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(packet)
        m.add_string(path)
        m.add_string("")  # reserved
        m.add_int(0)  # reserved
        chan = Channel(chanid)
        transport._channels.put(chanid, chan)
        transport.channel_events[chanid] = event = threading.Event()
        transport.channels_seen[chanid] = True
        chan._set_transport(transport)
        chan._set_window(window, packet)
    transport._send_user_message(m)
    deadline = time.monotonic() + timeout
    while not event.wait(0.05):
        if not transport.active:
            raise transport.get_exception() or paramiko.SSHException("Unable to open channel.")
        if time.monotonic() > deadline:
            raise paramiko.SSHException("Timeout opening channel.")
    chan = transport._channels.get(chanid)
    if chan is None:
        raise transport.get_exception() or paramiko.SSHException("Unable to open channel.")
    return chan
