"""Machine-level groundwork for the network-namespace hosts of tests/nshosts.py (root only).

Prerequisite checks, finding and killing the processes of a namespace,
removing the hosts of crashed runs, /24 allocation from ``POOL``, the remote
user and the cached remote env (built once per machine).  Pytest-free.
"""
from __future__ import annotations

import contextlib, fcntl, ipaddress, itertools, json, logging  # noqa: E401
import os, pwd, re, shutil, signal, subprocess, tempfile, time  # noqa: E401
from pathlib import Path
from typing import Iterator, Optional, Sequence

from sshtesthost import REMOTE_ENV_PREFIX, REMOTE_USER, SYSTEM_PYTHON, HostSetupError, _run

log = logging.getLogger("nshosts")  # one logger for the whole netns host machinery

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
#: A file in a run's ``sik-hosts-<pid>-*`` dir naming (one a line) the blackhole routes that run added
#: for subnets routed only inside its namespaces: cleanup_stale() deletes them after a crash.
STALE_ROUTES_FILE = "blackhole-routes"


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
            with contextlib.suppress(OSError):
                for subnet in (path / STALE_ROUTES_FILE).read_text().split():
                    _ip("route", "del", "blackhole", subnet, check=False)
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


#: The user of the 2FA test host (nshosts.TwoFactor): its own account, so that every other test
#: host keeps a user without a password (key login only).
TWO_FACTOR_USER = "sik2fa"


def ensure_password_user(user: str, password: str) -> pwd.struct_passwd:
    """Create ``user`` once, with ``password`` (for pam_unix on the 2FA test host) and no sudo."""
    with _flock(_LOCK):
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", user])
            pw = pwd.getpwnam(user)
        proc = subprocess.run(["chpasswd"], input=f"{user}:{password}\n", capture_output=True, text=True,
                              timeout=30)
        if proc.returncode:
            raise HostSetupError(f"chpasswd for {user} failed: {proc.stderr.strip()}")
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
