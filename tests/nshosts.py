"""Real OpenSSH test hosts in Linux network namespaces (root only).

Each host is a network namespace joined to its parent by a veth pair with a
private /24 (10.213.N.0/24: parent side .1, host side .2) and a foreground
``sshd`` running inside it, in its own UTS and mount namespace: a distinct
hostname, a private home for the remote user, private /tmp and /var/tmp, and
the shared remote Python env (with ipykernel) bind-mounted read-only at
``REMOTE_ENV_PREFIX``, a path that exists only for processes started through
that sshd.  The client side is an ``ssh -F``
config with one alias per host plus aliases that fail in known ways.  Nothing
is written to the real ``~/.ssh``.  Pytest-free: bench and demo scripts import it.

Typical use::

    with NetnsHostFactory() as factory:
        host = factory.create_host("btest")
        subprocess.run(["ssh", "-F", str(host.ssh_config), host.alias, "hostname"])
"""
from __future__ import annotations

import atexit, contextlib, itertools, json  # noqa: E401
import os, pwd, re, shlex, shutil, signal, socket, subprocess, tempfile, time  # noqa: E401
from pathlib import Path
from typing import Optional, Sequence

# The host-independent interface and the machine-level groundwork live in
# their own modules; every name importers know from here is re-exported.
from nssetup import (
    CACHE_DIR, POOL, PREFIX, RUN_DIR, SSHD, _LOCK, _allocate_subnet, _ensure_safety_route, _flock, _ip,
    TWO_FACTOR_USER, _kill_ns_processes, _taken_subnets, cleanup_stale, ensure_password_user, ensure_remote_env,
    ensure_remote_user, log,
    missing_prerequisites, ns_pids,
)
from sshtesthost import (
    REMOTE_ENV_PREFIX, REMOTE_PATH, REMOTE_USER, SYSTEM_PYTHON, ClientFiles, HostSetupError, SSHTestHost,
    _run, host_env, keygen,
)

__all__ = [
    "CACHE_DIR", "POOL", "PREFIX", "REMOTE_ENV_PREFIX", "REMOTE_PATH", "REMOTE_USER", "RUN_DIR", "SSHD",
    "SSHD_CONFIG", "SYSTEM_PYTHON", "TWO_FACTOR_USER", "TwoFactor", "ClientFiles", "HostSetupError", "NetnsHost", "NetnsHostFactory",
    "SSHTestHost", "cleanup_stale", "ensure_remote_env", "ensure_remote_user", "keygen", "log",
    "missing_prerequisites", "ns_pids",
]

_counter = itertools.count(1)


SSHD_CONFIG = "\n".join([
    "HostKey {host_key}", "{listen}", "AddressFamily {family}", "PidFile none",
    "UsePAM no", "StrictModes no", "PermitRootLogin no", "PasswordAuthentication no",
    "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
    "AuthorizedKeysFile {home}/.ssh/authorized_keys", "PermitUserEnvironment yes",
    "AllowTcpForwarding yes", "AllowStreamLocalForwarding yes", "StreamLocalBindUnlink yes",
    "X11Forwarding no", "MaxStartups 100:30:200", "MaxSessions 100", "UseDNS no", "PrintMotd no",
    "LogLevel VERBOSE", "Subsystem sftp internal-sftp", ""])


#: A host whose login needs a person, as at HPC centres: keyboard-interactive only, through PAM,
#: the account's password (pam_unix) and then a one-time code (pam_google_authenticator).
SSHD_2FA_CHANGES = {"UsePAM no": "UsePAM yes", "KbdInteractiveAuthentication no": "KbdInteractiveAuthentication yes",
                    "PubkeyAuthentication yes": "PubkeyAuthentication yes\nAuthenticationMethods keyboard-interactive"}
#: /etc/pam.d/sshd inside that host's mount namespace only (bind-mounted there): the machine's
#: own file is never touched.
PAM_2FA = "\n".join([
    "auth required pam_unix.so", "auth required pam_google_authenticator.so",
    "account required pam_unix.so", "session required pam_permit.so", "password required pam_deny.so", ""])


class TwoFactor:
    """The password and TOTP secret of a 2FA host's user; codes come from oathtool."""

    def __init__(self, password: str = "sik-2fa-Passw0rd", secret: str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP") -> None:
        self.password, self.secret = password, secret

    def code(self, when: str = "now") -> str:
        """The TOTP code for ``when`` (oathtool -N: 'now', 'now + 30 seconds')."""
        return _run(["oathtool", "--totp", "-b", "-N", when, self.secret]).stdout.strip()

    def wrong_code(self) -> str:
        """A code no window around now accepts."""
        valid = {self.code(f"now {d:+d} seconds") for d in range(-120, 121, 30)}
        return next(c for c in (f"{n:06d}" for n in range(123456, 999999, 111111)) if c not in valid)

    def secret_file(self) -> str:
        """~/.google_authenticator: no RATE_LIMIT and no DISALLOW_REUSE line, so tests may log in
        several times within one 30 s window."""
        return f'{self.secret}\n" TOTP_AUTH\n" WINDOW_SIZE 3\n'


#: (inode, device) of every network namespace this process made: the leak guard in
#: tests/conftest.py only blames this run for kernels inside them (parallel runs stay apart).
OWNED_NETNS: set = set()


class NetnsHost(SSHTestHost):
    """An sshd in its own network namespace; made by NetnsHostFactory.create_host()."""

    def __init__(self, factory: "NetnsHostFactory", name: str, hostname: str,
                 reachable_from: Optional["NetnsHost"], port: int = 22, ipv6: bool = False,
                 two_factor: Optional[TwoFactor] = None, pw: Optional[pwd.struct_passwd] = None,
                 binds: Sequence[tuple[str, str]] = ()) -> None:
        self.factory, self.reachable_from = factory, reachable_from
        self.binds = tuple(binds)
        self.ipv6 = ipv6
        self.address6 = self.outer_address6 = ""  # set by _make_network() with ipv6
        self.two_factor, self.pw = two_factor, pw or factory.user
        tag = f"{os.getpid():x}"  # names carry the owner pid: cleanup_stale() checks it
        while True:  # skip names left by an earlier process that had our pid
            idx = next(_counter)
            self.namespace = f"{PREFIX}-{tag}-{idx}"
            self.veth_outer, self.veth_inner = f"{PREFIX}{tag}o{idx}", f"{PREFIX}{tag}i{idx}"
            if not any(Path(p).exists() for p in (f"/run/netns/{self.namespace}",
                                                    f"/sys/class/net/{self.veth_outer}")):
                break
        self.parent_ns = reachable_from.namespace if reachable_from else None
        self._proc: Optional[subprocess.Popen] = None
        self._closed = False
        self.dir = factory.dir / "hosts" / name  # server side: config, keys, log, home
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "sshd.log"
        super().__init__(alias=name, address="", port=port, hostname=hostname,
                         user=self.pw.pw_name, ssh_config=factory.client.config)
        try:
            with _flock(_LOCK):
                self.subnet = _allocate_subnet()
                self.outer_address, self.address = (str(h) for h in itertools.islice(self.subnet.hosts(), 2))
                self._make_network()
                st = os.stat(f"/run/netns/{self.namespace}")
                OWNED_NETNS.add((st.st_ino, st.st_dev))
            self.local_home = self.dir / "home"  # the remote home, seen from the root ns
            self.host_key = self._write_server_files()
            self._start_sshd()
        except BaseException:
            self.close()
            raise

    def _make_network(self) -> None:
        outer, inner = f"{self.outer_address}/24", f"{self.address}/24"
        if self.parent_ns:
            # Routed inside the bastion only: a blackhole route here marks the /24 taken for the
            # subnet allocation of other processes (parallel runs, xdist workers), and keeps it
            # unreachable from here as it would be anyway.
            _ip("route", "replace", "blackhole", str(self.subnet))
        _ip("netns", "add", self.namespace)
        _ip("link", "add", self.veth_outer, "type", "veth", "peer", "name", self.veth_inner,
            "netns", self.namespace, ns=self.parent_ns)
        _ip("addr", "add", outer, "dev", self.veth_outer, ns=self.parent_ns)
        _ip("link", "set", self.veth_outer, "up", ns=self.parent_ns)
        _ip("addr", "add", inner, "dev", self.veth_inner, ns=self.namespace)
        _ip("link", "set", "lo", "up", ns=self.namespace)
        _ip("link", "set", self.veth_inner, "up", ns=self.namespace)
        if self.ipv6:  # a ULA /64 numbered after the IPv4 /24, unique on this machine like it
            net = f"fd53:6b{self.subnet.network_address.packed[1]:02x}:{self.subnet.network_address.packed[2]:x}"
            self.outer_address6, self.address6 = f"{net}::1", f"{net}::2"
            _ip("-6", "addr", "add", f"{self.outer_address6}/64", "dev", self.veth_outer, "nodad", ns=self.parent_ns)
            _ip("-6", "addr", "add", f"{self.address6}/64", "dev", self.veth_inner, "nodad", ns=self.namespace)
        self._static_neighbours()

    def _mac(self, dev: str, ns: Optional[str]) -> str:
        return json.loads(_ip("-j", "link", "show", "dev", dev, ns=ns).stdout)[0]["address"]

    def _static_neighbours(self) -> None:
        # Permanent ARP entries: during link_down() a connect must time out as
        # on a real cut, not fail with "No route to host" once ARP gives up.
        outer_mac, inner_mac = self._mac(self.veth_outer, self.parent_ns), self._mac(self.veth_inner, self.namespace)
        _ip("neigh", "replace", self.address, "lladdr", inner_mac, "dev", self.veth_outer, "nud", "permanent",
            ns=self.parent_ns)
        _ip("neigh", "replace", self.outer_address, "lladdr", outer_mac, "dev", self.veth_inner,
            "nud", "permanent", ns=self.namespace)

    def _write_server_files(self) -> str:
        pw = self.pw
        host_key = keygen(self.dir / "ssh_host_ed25519_key", f"sik-host-{self.alias}")
        shutil.copytree("/etc/skel", self.local_home, symlinks=True)
        ssh_dir = self.local_home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(self.factory.client.authorized_key + "\n")
        # sshd reads it with PermitUserEnvironment yes: `python3` = the env's.
        (ssh_dir / "environment").write_text(f"PATH={REMOTE_PATH}\n")
        for path in [self.local_home, *self.local_home.rglob("*")]:
            os.lchown(path, pw.pw_uid, pw.pw_gid)
        self.local_home.chmod(0o750)
        hosts_file = self.dir / "hosts"  # so the remote resolves its own name
        hosts_file.write_text(Path("/etc/hosts").read_text() + f"127.0.1.1\t{self.hostname}\n")
        hosts_file.chmod(0o644)
        listen = [f"ListenAddress {self.address}:{self.port}"]
        listen += [f"ListenAddress [{self.address6}]:{self.port}"] if self.address6 else []
        config = SSHD_CONFIG.format(host_key=self.dir / "ssh_host_ed25519_key", listen="\n".join(listen),
                                    family="any" if self.address6 else "inet", home=self.home)
        if self.two_factor is not None:
            for old, new in SSHD_2FA_CHANGES.items():
                config = config.replace(old, new)
            (self.dir / "pam_sshd").write_text(PAM_2FA)
            (self.dir / "pam_sshd").chmod(0o644)
            secret = self.local_home / ".google_authenticator"  # the user's own, 0400, as the module insists
            secret.write_text(self.two_factor.secret_file())
            os.chown(secret, pw.pw_uid, pw.pw_gid)
            secret.chmod(0o400)
        (self.dir / "sshd_config").write_text(config)
        return host_key

    def _start_sshd(self, timeout: float = 10.0) -> None:
        q = shlex.quote
        setup = " && ".join([
            f"hostname {q(self.hostname)}",
            "mount -t tmpfs -o mode=0755 sik-mnt /mnt",
            f"mkdir -p {q(self.env_prefix)}",
            f"mount --bind {q(str(self.factory.env_dir))} {q(self.env_prefix)}",
            f"mount -o remount,bind,ro {q(self.env_prefix)}",  # tests can't spoil the cache
            f"mount --bind {q(str(self.local_home))} {q(self.home)}",
            f"mount --bind {q(str(self.dir / 'hosts'))} /etc/hosts",
            *([f"mount --bind {q(str(self.dir / 'pam_sshd'))} /etc/pam.d/sshd"] if self.two_factor else []),
            *(f"mount --bind {q(src)} {q(dst)}" for src, dst in self.binds),
            "mount -t tmpfs -o mode=1777 sik-tmp /tmp",  # remote files stay remote
            "mount -t tmpfs -o mode=1777 sik-vartmp /var/tmp",
            f"exec {SSHD} -D -e -f {q(str(self.dir / 'sshd_config'))} -E {q(str(self.log_path))}",
        ])
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        argv = ["ip", "netns", "exec", self.namespace,
                "unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", setup]
        with open(self.log_path, "a") as out:
            # Own session: a Ctrl-C aimed at pytest must not kill sshd mid-test.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                          start_new_session=True, env=host_env())
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise HostSetupError(f"sshd of {self.alias} exited ({self._proc.returncode}):\n{self._log_tail()}")
            if self._listening():
                return
            if time.monotonic() > deadline:
                raise HostSetupError(f"sshd of {self.alias} not listening after {timeout} s:\n{self._log_tail()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        if self.parent_ns:  # not routable from here: trust the log
            return f"Server listening on {self.address} port {self.port}" in self.sshd_log()
        with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), timeout=1):
            return True
        return False

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.sshd_log().splitlines()[-lines:])

    def _stop_sshd(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()  # only the listener: like `systemctl restart ssh`
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def remote_pids(self, pattern: str) -> list[int]:
        """Pids of the user's processes in this host whose command line matches (re.search).

        Read from /proc, not over ssh: works during link_down() and can't
        match its own probe the way `ssh host pgrep -f` does.
        """
        found = []
        for pid in ns_pids(self.namespace):
            try:
                with open(f"/proc/{pid}/status") as fh:
                    status = dict(line.split(":", 1) for line in fh if ":" in line)
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            uid = int(status.get("Uid", "-1").split()[0])
            if uid == self.pw.pw_uid and "Z" not in status.get("State", "") \
                    and re.search(pattern, cmdline.strip()):
                found.append(pid)
        return found

    def link_down(self) -> None:
        """A blackhole route in the host for our side's address: the host still receives, but
        everything it sends back vanishes silently (a dead VPN, a remote outage). Connects time
        out, established connections hear nothing; nobody gets an error."""
        _ip("route", "replace", "blackhole", f"{self.outer_address}/32", ns=self.namespace)

    def link_up(self) -> None:
        """Undo link_down()."""
        _ip("route", "del", "blackhole", f"{self.outer_address}/32", ns=self.namespace, check=False)

    def cut(self, kind: str = "blackhole") -> None:
        """``blackhole``: link_down(). ``down``: our end of the veth goes down, so the route to the
        host goes with it (a dropped Wi-Fi, an unplugged cable); an ``unreachable`` route for its
        subnet stands in for the missing one (the pool's safety blackhole route would otherwise
        catch the packets): connects fail at once with "No route to host"."""
        if kind == "blackhole":
            self.link_down()
        elif kind == "down":
            # Route first: the /24 stays in the routing table throughout (other processes'
            # subnet allocation reads it there).
            _ip("route", "replace", "unreachable", str(self.subnet), ns=self.parent_ns)
            _ip("link", "set", self.veth_outer, "down", ns=self.parent_ns)
        else:
            raise ValueError(f"unknown kind of cut {kind!r}")

    def restore(self, kind: str = "blackhole") -> None:
        """Undo cut(kind); for ``down`` the kernel flushed the ARP entries, so they are re-added."""
        if kind == "blackhole":
            self.link_up()
        elif kind == "down":
            _ip("route", "del", "unreachable", str(self.subnet), ns=self.parent_ns, check=False)
            _ip("link", "set", self.veth_outer, "up", ns=self.parent_ns)
            self._static_neighbours()
        else:
            raise ValueError(f"unknown kind of cut {kind!r}")

    def restart_sshd(self, drop_connections: bool = False) -> None:
        """Stop the listener and start it again with the same config and host key.

        With ``drop_connections`` the per-connection sshd processes die too (a reboot of the
        server, or `systemctl stop ssh; pkill sshd`): established connections break.
        """
        self._stop_sshd()
        if drop_connections:
            for pid in ns_pids(self.namespace):
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                if comm.startswith("sshd"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self._start_sshd()

    def sshd_log(self) -> str:
        """The sshd log so far (LogLevel VERBOSE)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Kill sshd and every process in the namespace, delete namespace, veth and files."""
        if self._closed:
            return
        self._closed = True
        for other in list(self.factory.hosts.values()):
            if other.reachable_from is self:  # its link dies with our namespace
                other.close()
        # User processes first, while sshd's session monitors and listener
        # are alive to reap them (orphans wait for the slow init here).
        _kill_ns_processes(self.namespace, grace=2.0, non_root_only=True)
        self._stop_sshd()
        _kill_ns_processes(self.namespace, grace=2.0)
        _ip("link", "delete", self.veth_outer, ns=self.parent_ns, check=False)
        if self.parent_ns and hasattr(self, "subnet"):
            _ip("route", "del", "blackhole", str(self.subnet), check=False)
        _ip("netns", "delete", self.namespace, check=False)
        if hasattr(self, "subnet"):
            _taken_subnets.discard(self.subnet)
        self.factory._forget(self)
        shutil.rmtree(self.dir, ignore_errors=True)


class NetnsHostFactory:
    """Builds NetnsHosts sharing one client config, remote user and remote env.

    Construction checks prerequisites, removes stale hosts of crashed runs,
    creates the user and (once per machine) the remote env.
    """

    def __init__(self, user: str = REMOTE_USER, cache_dir: Path = CACHE_DIR, clean_stale: bool = True) -> None:
        problems = missing_prerequisites()
        if problems:
            raise HostSetupError("; ".join(problems))
        if clean_stale:
            cleanup_stale()
        _ensure_safety_route()
        self.user = ensure_remote_user(user)
        self.env_dir = ensure_remote_env(cache_dir)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-hosts-{os.getpid():x}-", dir=RUN_DIR))  # 0700
        self.client = ClientFiles(self.dir / "client")
        self.ssh_config = self.client.config
        self.hosts: dict[str, NetnsHost] = {}
        self._closed = False
        atexit.register(self.close)  # a crashed session still tears down

    def create_host(self, name: str = "btest", hostname: Optional[str] = None,
                    reachable_from: Optional[NetnsHost] = None, port: int = 22, ipv6: bool = False,
                    two_factor: Optional[TwoFactor] = None, binds: Sequence[tuple[str, str]] = ()) -> NetnsHost:
        """Start host ``name`` (ssh alias) with remote hostname ``sik-<name>`` by default.

        ``port``: sshd listens there instead of 22. ``ipv6``: the link also gets an IPv6 address
        (``host.address6``) and sshd listens on it too; the client config then also matches the
        bare addresses (``10.213.N.2``, ``fd53:...::2``: ``--host [v6]:port``) with the same key
        and known_hosts, as a user's ``Host *`` defaults would.

        With ``reachable_from=bastion`` its link hangs off the bastion's
        namespace, unroutable from here: the alias goes through ProxyJump.
        With ``two_factor`` its login needs the password and a one-time code of
        TWO_FACTOR_USER (keyboard-interactive through PAM), as at HPC centres.
        ``binds``: (source, mount point) pairs bind-mounted in the host's mount namespace (every
        sshd session sees them; the mount point must exist), e.g. a SLURM login host's /etc/slurm.
        """
        if self._closed or name in self.hosts:
            raise HostSetupError(f"factory closed or host {name!r} exists")
        pw = ensure_password_user(TWO_FACTOR_USER, two_factor.password) if two_factor else None
        host = NetnsHost(self, name, hostname or f"{PREFIX}-{name}", reachable_from, port=port, ipv6=ipv6,
                         two_factor=two_factor, pw=pw, binds=binds)
        self.hosts[name] = host
        self.client.add_host(name, host.address, port, host.user, host.host_key,
                             proxy_jump=reachable_from.alias if reachable_from else None,
                             bare_addresses=[a for a in (host.address, host.address6) if a] if ipv6 else ())
        return host

    def _forget(self, host: NetnsHost) -> None:
        if self.hosts.get(host.alias) is host:
            del self.hosts[host.alias]
            self.client.remove_host(host.alias)

    def close(self) -> None:
        """Close all hosts (jump hosts first) and remove the files; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for host in reversed(list(self.hosts.values())):
            host.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> "NetnsHostFactory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
