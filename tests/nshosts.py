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

import atexit, contextlib, fcntl, ipaddress, itertools, json, logging  # noqa: E401
import os, pwd, re, shlex, shutil, signal, socket, subprocess, tempfile, time  # noqa: E401
from pathlib import Path
from typing import Iterator, Optional, Sequence

log = logging.getLogger("nshosts")

REMOTE_USER = "sikuser"
REMOTE_ENV_PREFIX = "/mnt/remote/envs/py3"
REMOTE_PATH = f"{REMOTE_ENV_PREFIX}/bin:/usr/local/bin:/usr/bin:/bin"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python, without ipykernel
SSHD = "/usr/sbin/sshd"  # absolute: sshd refuses to re-exec itself otherwise
CACHE_DIR = Path(os.environ.get("SIK_TEST_CACHE", "/var/cache/ssh-ipykernel-tests"))
POOL = ipaddress.IPv4Network(os.environ.get("SIK_NETNS_POOL", "10.213.0.0/16"))
PREFIX = "sik"  # every namespace and veth name starts with it (stale cleanup)
# Factory files live under /run, not /tmp: the hosts get a private /tmp, and
# sshd opens its config, host key and log after that is mounted.
RUN_DIR = Path("/run")
_LOCK = RUN_DIR / f"{PREFIX}-nshosts.lock"
_NS_RE = re.compile(rf"^{PREFIX}-([0-9a-f]+)-\d+$")
_taken_subnets: set[ipaddress.IPv4Network] = set()
_counter = itertools.count(1)


class HostSetupError(RuntimeError):
    """A test host could not be built; the message says why."""


def _run(argv: Sequence[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise HostSetupError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _ip(*args: str, ns: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *(["-n", ns] if ns else []), *args], check=check)


@contextlib.contextmanager
def _flock(path: str | Path) -> Iterator[None]:
    """Exclusive lock shared by parallel runs (user creation, subnets, env build)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def missing_prerequisites() -> list[str]:
    """Why netns hosts cannot be built here; empty when they can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (network namespaces and sshd need root)")
    for tool in ("ip", "unshare", "ssh", "ssh-keygen", "useradd", "usermod"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found")
    for path in (SSHD, SYSTEM_PYTHON):
        if not os.access(path, os.X_OK):
            problems.append(f"{path} missing")
    if not problems and _run(["ip", "netns", "list"], check=False).returncode:
        problems.append("`ip netns` does not work")
    return problems


def ns_pids(ns: str) -> list[int]:
    """Pids of all processes inside network namespace ``ns`` (like `ip netns pids`)."""
    try:
        ref = os.stat(f"/run/netns/{ns}")
    except OSError:
        return []
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # gone, or a zombie (no namespaces left)
            st = os.stat(f"/proc/{entry}/ns/net")
            if (st.st_ino, st.st_dev) == (ref.st_ino, ref.st_dev):
                pids.append(int(entry))
    return pids


def _kill_ns_processes(ns: str, grace: float, non_root_only: bool = False) -> None:
    # Scoped to the namespace rather than `pkill -u sikuser`, so parallel runs
    # (same user, other namespaces) are left alone.
    def victims() -> list[int]:
        return [p for p in ns_pids(ns) if not (non_root_only and _uid(p) in (0, None))]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while victims() and time.monotonic() < deadline:
            time.sleep(0.05)


def _uid(pid: int) -> Optional[int]:
    with contextlib.suppress(OSError):
        return os.stat(f"/proc/{pid}").st_uid
    return None


def _is_stale(pid_hex: str) -> bool:
    # Our own pid counts as alive even for unknown names: another copy of
    # this module may own them.  Reused-pid leftovers are skipped by naming.
    try:
        pid = int(pid_hex, 16)
    except ValueError:  # not one of our names
        return False
    return pid != os.getpid() and not Path(f"/proc/{pid}").exists()


def cleanup_stale() -> list[str]:
    """Delete namespaces (their veths go with them) and tmp dirs left by crashed runs."""
    removed = []
    for line in _run(["ip", "netns", "list"]).stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        match = _NS_RE.match(ns)
        if match and _is_stale(match.group(1)):
            _kill_ns_processes(ns, grace=1.0)
            _ip("netns", "delete", ns, check=False)
            removed.append(ns)
    for path in RUN_DIR.glob(f"{PREFIX}-hosts-*-*"):
        if _is_stale(path.name.split("-")[2]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    if removed:
        log.info("removed stale test hosts: %s", ", ".join(removed))
    return removed


def _ensure_safety_route() -> None:
    # Without it, a packet for a pool address whose veth is gone (teardown, or
    # a client still retrying afterwards) would follow the default route off
    # the machine.  Deliberately left installed: it only ever drops.
    _ip("route", "replace", "blackhole", str(POOL), "metric", "4000")


def _allocate_subnet() -> ipaddress.IPv4Network:
    """A /24 of POOL that overlaps no route of the root namespace; call under _LOCK."""
    used = []
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "default")
        if dst == "default" or (route.get("type") == "blackhole" and dst == str(POOL)):
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(dst, strict=False))
    for subnet in itertools.islice(POOL.subnets(new_prefix=24), 1, None):
        if subnet not in _taken_subnets and not any(subnet.overlaps(u) for u in used):
            _taken_subnets.add(subnet)
            return subnet
    raise HostSetupError(f"no free /24 left in {POOL}")


def ensure_remote_user(user: str = REMOTE_USER, sudo: bool = True) -> pwd.struct_passwd:
    """Create the non-root remote user once (key login only, optional NOPASSWD sudo)."""
    with _flock(_LOCK):
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", user])
            pw = pwd.getpwnam(user)
        # useradd leaves the password "!" (locked); with UsePAM no, sshd then
        # refuses even public-key logins.  "*" = no password but not locked.
        _run(["usermod", "-p", "*", user])
        sudoers = Path(f"/etc/sudoers.d/{PREFIX}-{user}")
        if sudo and Path("/etc/sudoers.d").is_dir() and not sudoers.exists():
            sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD:ALL\n")
            sudoers.chmod(0o440)
    return pw


def _env_ok(env: Path) -> bool:
    python = env / "bin" / "python"
    return python.exists() and _run([str(python), "-c", "import ipykernel"], check=False).returncode == 0


def ensure_remote_env(cache_dir: Path = CACHE_DIR, packages: Sequence[str] = ("ipykernel",)) -> Path:
    """Return the cached remote env dir, building it once per machine (~30 s).

    The venv is built while mounted at REMOTE_ENV_PREFIX (in a private mount
    namespace), so its scripts' shebangs name the path the hosts will see.
    """
    env = cache_dir / "py3"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.chmod(0o755)  # the remote user must be able to run it
    with _flock(cache_dir / ".lock"):
        if _env_ok(env):
            return env
        build = Path(tempfile.mkdtemp(prefix="py3.build-", dir=cache_dir))
        build.chmod(0o755)
        build_log = cache_dir / "build.log"
        log.warning("building remote env %s (pip install %s; ~30 s; log: %s)", env, " ".join(packages), build_log)
        script = ('set -e; umask 022; mount -t tmpfs -o mode=0755 sik-build /mnt; mkdir -p "$2"; '
                  'mount --bind "$1" "$2"; "$3" -m venv "$2"; shift 3; '
                  f'"{REMOTE_ENV_PREFIX}/bin/pip" install --no-input "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                str(build), REMOTE_ENV_PREFIX, SYSTEM_PYTHON, *packages]
        started = time.monotonic()
        with open(build_log, "w") as out:
            rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
        if rc or not _env_ok(build):
            shutil.rmtree(build, ignore_errors=True)
            tail = build_log.read_text(errors="replace")[-2000:]
            raise HostSetupError(f"building the remote env failed (rc={rc}):\n{tail}")
        shutil.rmtree(env, ignore_errors=True)
        build.rename(env)
        log.warning("remote env built in %.0f s", time.monotonic() - started)
    return env


def keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair without passphrase; return the public key line."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return Path(f"{path}.pub").read_text().strip()


class ClientFiles:
    """Client-side ssh material in a private (0700) directory, for ``ssh -F``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config = directory / "ssh_config"
        self.identity = directory / "id_ed25519"
        self.authorized_key = keygen(self.identity, "sik-client")
        self.unauthorized_identity = directory / "id_ed25519_unauthorized"
        keygen(self.unauthorized_identity, "sik-unauthorized")
        self.wrong_host_key = keygen(directory / "wrong_host_key", "sik-wrong-host-key")
        self.known_hosts = directory / "known_hosts"
        self.known_hosts_changed = directory / "known_hosts_changed"
        self.known_hosts_empty = directory / "known_hosts_empty"
        for path in (self.known_hosts, self.known_hosts_changed, self.known_hosts_empty):
            path.touch(mode=0o600)
        self._blocks: dict[str, str] = {}
        self._write()

    def add_host(self, alias: str, address: str, port: int, user: str, host_key: str,
                 proxy_jump: Optional[str] = None, refused_port: int = 9) -> None:
        """Register ``alias`` plus ``-badkey``/``-changedkey``/``-unknownkey``/``-refused``."""
        target = address if port == 22 else f"[{address}]:{port}"
        key = " ".join(host_key.split()[:2])
        with open(self.known_hosts, "a") as fh:
            fh.write(f"{target} {key}\n")
        with open(self.known_hosts_changed, "a") as fh:
            fh.write(f"{target} {' '.join(self.wrong_host_key.split()[:2])}\n")

        def block(name: str, identity: Path = self.identity, known: Path = self.known_hosts,
                  strict: str = "yes", to_port: int = port) -> str:
            lines = [f"Host {name}", f"  HostName {address}", f"  Port {to_port}", f"  User {user}",
                     f'  IdentityFile "{identity}"', "  IdentitiesOnly yes",
                     f'  UserKnownHostsFile "{known}"', "  GlobalKnownHostsFile /dev/null",
                     f"  StrictHostKeyChecking {strict}", "  BatchMode no"]
            lines += [f"  ProxyJump {proxy_jump}"] if proxy_jump else []
            return "\n".join(lines) + "\n"

        self._blocks[alias] = "\n".join([
            block(alias),
            block(f"{alias}-badkey", identity=self.unauthorized_identity),
            block(f"{alias}-changedkey", known=self.known_hosts_changed),
            block(f"{alias}-unknownkey", known=self.known_hosts_empty, strict="ask"),
            block(f"{alias}-refused", to_port=refused_port),
        ])
        self._write()

    def remove_host(self, alias: str) -> None:
        """Drop the aliases of a host (its known_hosts lines are harmless)."""
        self._blocks.pop(alias, None)
        self._write()

    def _write(self) -> None:
        text = "# generated by tests/nshosts.py\n\n" + "\n".join(self._blocks.values())
        self.config.write_text(text)
        self.config.chmod(0o600)  # ssh rejects a config writable by others


class SSHTestHost:
    """What tests see of a remote host, whatever builds it (netns or Docker).

    Subclasses implement ``remote_pids(pattern)`` (pids of the user's processes
    whose command line matches the regex), ``link_down()``/``link_up()`` (cut
    the path: connects time out), ``restart_sshd()`` (restart the listener;
    established sessions survive), ``sshd_log()`` and ``close()``.
    """

    def __init__(self, *, alias: str, address: str, port: int, hostname: str, user: str,
                 ssh_config: Path, env_prefix: str = REMOTE_ENV_PREFIX) -> None:
        self.alias, self.address, self.port = alias, address, port
        self.hostname, self.user, self.ssh_config = hostname, user, ssh_config
        self.env_prefix = env_prefix
        self.env_python = f"{env_prefix}/bin/python"
        self.python_without_ipykernel = SYSTEM_PYTHON
        self.home = f"/home/{user}"
        self.runtime_dir = f"{self.home}/.local/share/jupyter/runtime"
        self.aliases = {kind: f"{alias}-{kind}" for kind in ("badkey", "changedkey", "unknownkey", "refused")}

    def ssh_argv(self, *args: str, alias: Optional[str] = None, options: Sequence[str] = ()) -> list[str]:
        """``ssh -F <config> [options] <alias> [args]``."""
        return ["ssh", "-F", str(self.ssh_config), *options, alias or self.alias, *args]

    def run(self, cmd: str, timeout: float = 30.0, alias: Optional[str] = None,
            options: Sequence[str] = ()) -> subprocess.CompletedProcess:
        """Run shell command ``cmd`` on the remote as the user; never prompts."""
        argv = self.ssh_argv(cmd, alias=alias, options=["-o", "BatchMode=yes", *options])
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def remote_pids(self, pattern: str) -> list[int]:
        raise NotImplementedError

    def link_down(self) -> None:
        raise NotImplementedError

    def link_up(self) -> None:
        raise NotImplementedError

    def restart_sshd(self) -> None:
        raise NotImplementedError

    def sshd_log(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Tear the host down; safe to call twice."""

    def __enter__(self) -> "SSHTestHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.alias} {self.user}@{self.address}:{self.port} ({self.hostname})>"


SSHD_CONFIG = "\n".join([
    "HostKey {host_key}", "ListenAddress {address}:22", "AddressFamily inet", "PidFile none",
    "UsePAM no", "StrictModes no", "PermitRootLogin no", "PasswordAuthentication no",
    "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
    "AuthorizedKeysFile {home}/.ssh/authorized_keys", "PermitUserEnvironment yes",
    "AllowTcpForwarding yes", "AllowStreamLocalForwarding yes", "StreamLocalBindUnlink yes",
    "X11Forwarding no", "MaxStartups 100:30:200", "MaxSessions 100", "UseDNS no", "PrintMotd no",
    "LogLevel VERBOSE", "Subsystem sftp internal-sftp", ""])


class NetnsHost(SSHTestHost):
    """An sshd in its own network namespace; made by NetnsHostFactory.create_host()."""

    def __init__(self, factory: "NetnsHostFactory", name: str, hostname: str,
                 reachable_from: Optional["NetnsHost"]) -> None:
        self.factory, self.reachable_from = factory, reachable_from
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
        super().__init__(alias=name, address="", port=22, hostname=hostname,
                         user=factory.user.pw_name, ssh_config=factory.client.config)
        try:
            with _flock(_LOCK):
                self.subnet = _allocate_subnet()
                self.outer_address, self.address = (str(h) for h in itertools.islice(self.subnet.hosts(), 2))
                self._make_network()
            self.local_home = self.dir / "home"  # the remote home, seen from the root ns
            self.host_key = self._write_server_files()
            self._start_sshd()
        except BaseException:
            self.close()
            raise

    def _make_network(self) -> None:
        outer, inner = f"{self.outer_address}/24", f"{self.address}/24"
        _ip("netns", "add", self.namespace)
        _ip("link", "add", self.veth_outer, "type", "veth", "peer", "name", self.veth_inner,
            "netns", self.namespace, ns=self.parent_ns)
        _ip("addr", "add", outer, "dev", self.veth_outer, ns=self.parent_ns)
        _ip("link", "set", self.veth_outer, "up", ns=self.parent_ns)
        _ip("addr", "add", inner, "dev", self.veth_inner, ns=self.namespace)
        _ip("link", "set", "lo", "up", ns=self.namespace)
        _ip("link", "set", self.veth_inner, "up", ns=self.namespace)
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
        pw = self.factory.user
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
        (self.dir / "sshd_config").write_text(SSHD_CONFIG.format(
            host_key=self.dir / "ssh_host_ed25519_key", address=self.address, home=self.home))
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
                                          start_new_session=True)
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
            return f"Server listening on {self.address} port 22" in self.sshd_log()
        with contextlib.suppress(OSError), socket.create_connection((self.address, 22), timeout=1):
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
            if uid == self.factory.user.pw_uid and "Z" not in status.get("State", "") \
                    and re.search(pattern, cmdline.strip()):
                found.append(pid)
        return found

    def link_down(self) -> None:
        """Cut the link by downing the namespace end: packets to the host vanish.

        Not the outer end: that would drop the route, so connects would fail
        at once (blackhole) instead of timing out like on a real cut.
        """
        _ip("link", "set", self.veth_inner, "down", ns=self.namespace)

    def link_up(self) -> None:
        """Undo link_down(); the kernel flushed the namespace's ARP entry, so re-add it."""
        _ip("link", "set", self.veth_inner, "up", ns=self.namespace)
        self._static_neighbours()

    def restart_sshd(self) -> None:
        """Stop the listener and start it again with the same config and host key."""
        self._stop_sshd()
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
                    reachable_from: Optional[NetnsHost] = None) -> NetnsHost:
        """Start host ``name`` (ssh alias) with remote hostname ``sik-<name>`` by default.

        With ``reachable_from=bastion`` its link hangs off the bastion's
        namespace, unroutable from here: the alias goes through ProxyJump.
        """
        if self._closed or name in self.hosts:
            raise HostSetupError(f"factory closed or host {name!r} exists")
        host = NetnsHost(self, name, hostname or f"{PREFIX}-{name}", reachable_from)
        self.hosts[name] = host
        self.client.add_host(name, host.address, 22, host.user, host.host_key,
                             proxy_jump=reachable_from.alias if reachable_from else None)
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

