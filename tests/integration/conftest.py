"""Fixtures for the integration suite: real SSH test hosts.

By default the hosts are network namespaces built by tests/nshosts.py (needs
root).  With ``--docker-hosts`` (option registered in tests/conftest.py) the
``btest`` host is the container of docker/docker-compose.yml, started through
pytest-docker; tests see the same SSHTestHost interface either way.

Where the hosts cannot exist (not root, no ``ip netns``, no sshd) the tests
skip, except under CI=true, where they fail: CI must never go green without
having run them.
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # tests/ is not a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nshosts import (  # noqa: E402
    REMOTE_ENV_PREFIX, REMOTE_USER, ClientFiles, HostSetupError, NetnsHostFactory,
    SSHTestHost, keygen, missing_prerequisites,
)
from slurmcluster import SlurmCluster, missing_slurm_prerequisites  # noqa: E402

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
COMPOSE_FILE = HERE.parents[1] / "docker" / "docker-compose.yml"
HOST_ALIAS = DOCKER_SERVICE = "btest"  # the alias is also the compose service name


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    """Skip locally, fail in CI (so CI cannot pass without the hosts)."""
    if _in_ci():
        pytest.fail(f"SSH test hosts unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(f"SSH test hosts unavailable: {reason}")


def _docker_mode(config: pytest.Config) -> bool:
    return bool(config.getoption("--docker-hosts", default=False))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration ``integration`` (and ``docker`` in Docker mode)."""
    # The hook sees the whole session's items, not only this directory's.
    for item in items:
        if Path(str(item.path)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
            if _docker_mode(config):
                item.add_marker(pytest.mark.docker)


# ----------------------------------------------------------------- transports
#: Tests marked ``both_transports`` run once per backend; the others with the default one.
TRANSPORTS = ("openssh", "paramiko")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "transport" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_transports"):
        metafunc.parametrize("transport", TRANSPORTS, indirect=True)


#: Client programs that must not be on PATH when the paramiko transport is tested.
SSH_CLIENTS = frozenset({"ssh", "scp", "sftp", "slogin"})


@pytest.fixture(scope="session")
def path_without_ssh(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH like this one with no ssh client on it (as on a machine without OpenSSH): one
    directory of links to every other program on PATH, first one of a name wins."""
    bin_dir = tmp_path_factory.mktemp("no-ssh-bin")
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = os.path.join(directory, name)
            link = bin_dir / name
            if name in SSH_CLIENTS or link.exists() or link.is_symlink() or not os.access(target, os.X_OK):
                continue
            link.symlink_to(target)
    return str(bin_dir)


@pytest.fixture(autouse=True)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The --transport of this test's kernels (kernels.manage and kernels.transport_args add it).

    Tests of the paramiko transport run with no ssh client on PATH, as on the machines it is
    for: manage, the proxy and everything they start inherit that PATH, so nothing of the
    product can fall back on ssh unnoticed. (The tests' own look at the hosts uses
    sshtesthost.SSH, found before.)
    """
    import kernels

    kind = getattr(request, "param", None)
    monkeypatch.setattr(kernels, "TRANSPORT", kind)
    if kind == "paramiko":
        monkeypatch.setenv("PATH", request.getfixturevalue("path_without_ssh"))
        assert shutil.which("ssh") is None
    return kind or "openssh"


# --------------------------------------------------------------------- netns
def _built(what: str, make: Callable[[], T]) -> T:
    """``make()``, turning a HostSetupError into a test failure that says what failed.

    The result is a context manager (factory or host) that tears itself down on exit.
    """
    try:
        return make()
    except HostSetupError as exc:
        pytest.fail(f"{what} failed: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def host_factory(pytestconfig: pytest.Config) -> Iterator[NetnsHostFactory]:
    """The NetnsHostFactory of the session, for tests that need more hosts
    (``host_factory.create_host("jtest", reachable_from=ssh_host)``).  Skipped in Docker mode."""
    if _docker_mode(pytestconfig):
        pytest.skip("--docker-hosts: only the single Docker host exists")
    problems = missing_prerequisites()
    if problems:
        _unavailable("; ".join(problems))
    with _built("building the netns test hosts", NetnsHostFactory) as factory:
        yield factory


@pytest.fixture(scope="session")
def ssh_host(request: pytest.FixtureRequest) -> Iterator[SSHTestHost]:
    """The ``btest`` host: alias ``btest`` in ``ssh_host.ssh_config``, remote user
    ``sikuser``, ipykernel env at ``ssh_host.env_prefix`` (first ``python3`` on PATH)."""
    if _docker_mode(request.config):
        yield _docker_host(request)
        return
    factory: NetnsHostFactory = request.getfixturevalue("host_factory")
    with _built("starting the btest host", lambda: factory.create_host(HOST_ALIAS)) as host:
        yield host


# --------------------------------------------------------------------- SLURM
@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> Iterator[SlurmCluster]:
    """This worker's SLURM cluster (tests/slurmcluster.py): login host ``slurm_cluster.login``
    (alias ``slogin`` in its ``ssh_config``, sshd + slurmctld), compute hosts
    ``slurm_cluster.compute_hostnames`` (slurmd only, reachable only from the login host).
    Built on first use (well under a second). Tests use it through ``slurm``, which clears the queue."""
    factory: NetnsHostFactory = request.getfixturevalue("host_factory")
    problems = missing_slurm_prerequisites()
    if problems:
        _unavailable("; ".join(problems))
    with _built("starting the SLURM test cluster", lambda: SlurmCluster(factory)) as cluster:
        yield cluster


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's SLURM cluster with an empty queue and idle nodes, before and after the test
    (the tests of one worker share it; a job left running would hold a node for the next one)."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()


# -------------------------------------------------------------------- Jupyter
@dataclass
class JupyterDirs:
    """Per-test Jupyter dirs (also exported as JUPYTER_*_DIR)."""

    runtime: Path
    data: Path
    config: Path


@pytest.fixture(autouse=True)
def jupyter_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[JupyterDirs]:
    """Isolate local Jupyter state per test (autouse here: no test touches ~/.local/share/jupyter)."""
    # A short base, not tmp_path (~70 chars with the test name): unix sockets
    # made in the runtime dir must fit in 108 bytes, as under a real
    # ~/.local/share/jupyter/runtime.
    base = Path(tempfile.mkdtemp(prefix="sikj-"))
    dirs = JupyterDirs(*(base / sub for sub in ("runtime", "data", "config")))
    for var, path in (("JUPYTER_RUNTIME_DIR", dirs.runtime), ("JUPYTER_DATA_DIR", dirs.data),
                      ("JUPYTER_CONFIG_DIR", dirs.config)):
        path.mkdir(parents=True)
        monkeypatch.setenv(var, str(path))
    for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH"):  # no kernelspecs from elsewhere
        monkeypatch.delenv(var, raising=False)
    yield dirs
    # The tests' shared ssh masters would otherwise stay for their ControlPersist time.
    from kernels import end_masters

    end_masters(str(dirs.runtime))
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def conn(tmp_path: Path) -> Path:
    """A connection file as Jupyter writes it, for a proxy run by hand (kernels.start_proxy)."""
    from kernels import connection_file

    return connection_file(tmp_path)


@pytest.fixture
def nothing_left(ssh_host, jupyter_env):
    """After the test: no agent, kernel or key file of ours on btest, no local ssh process."""
    from kernels import local_ssh_children, wait_remote_clean

    yield
    assert not wait_remote_clean(ssh_host, timeout=15)
    assert not local_ssh_children(str(jupyter_env.runtime))


# -------------------------------------------------------------------- Docker
@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """pytest-docker: our compose file instead of its default tests/docker-compose.yml."""
    return str(COMPOSE_FILE)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DockerHost(SSHTestHost):
    """The Docker ``btest`` container seen through the SSHTestHost interface.

    Differences from NetnsHost: ``remote_pids`` returns the container's pids
    (what a remote shell sees, so kill them with ``run("kill ...")``);
    ``link_down`` pauses the container (connects time out in the banner
    exchange instead of the TCP connect).
    """

    def __init__(self, compose: list[str], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._compose = compose

    def _container(self) -> str:
        out = subprocess.run([*self._compose, "ps", "-q", DOCKER_SERVICE], capture_output=True,
                             text=True, check=True, timeout=60).stdout.split()
        if not out:
            raise RuntimeError(f"no running container for service {DOCKER_SERVICE}")
        return out[0]

    def _docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=60)

    def remote_pids(self, pattern: str) -> list[int]:
        """Container pids of the user's processes matching ``pattern`` (pgrep -f)."""
        res = self._docker("exec", self._container(), "pgrep", "-u", self.user, "-f", pattern, check=False)
        return [int(pid) for pid in res.stdout.split()]

    def link_down(self) -> None:
        """Freeze the container (docker pause)."""
        self._docker("pause", self._container())

    def link_up(self) -> None:
        """Thaw the container (docker unpause)."""
        self._docker("unpause", self._container())

    def restart_sshd(self) -> None:
        """Kill the listener; the container's entrypoint loop starts a new one."""
        self._docker("exec", self._container(), "sh", "-c", 'kill "$(cat /run/sshd.pid)"')
        time.sleep(0.5)
        _wait_for_ssh(self, timeout=30)

    def sshd_log(self) -> str:
        """``docker logs`` of the container (sshd -D -e logs to stderr)."""
        res = self._docker("logs", self._container(), check=False)
        return res.stdout + res.stderr


def _wait_for_ssh(host: SSHTestHost, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            res = host.run("true", timeout=10, options=["-o", "ConnectTimeout=5"])
            if res.returncode == 0:
                return
            err = res.stderr
        except subprocess.TimeoutExpired as exc:
            err = str(exc)
        if time.monotonic() > deadline:
            pytest.fail(f"Docker test host not reachable over ssh: {err}", pytrace=False)
        time.sleep(0.5)


def _docker_host(request: pytest.FixtureRequest) -> DockerHost:
    """Generate the keys, ``docker compose up`` (pytest-docker) and wait for sshd."""
    tmp = request.getfixturevalue("tmp_path_factory")
    keys = tmp.mktemp("docker-keys")
    host_key = keygen(keys / "ssh_host_ed25519_key", "sik-docker-host")
    client = ClientFiles(tmp.mktemp("docker-client"))
    (keys / "authorized_keys").write_text(client.authorized_key + "\n")
    (keys / "authorized_keys").chmod(0o644)  # sshd reads it as sikuser
    os.environ["SIK_DOCKER_KEYS"] = str(keys)  # interpolated by docker-compose.yml
    if not request.config.pluginmanager.hasplugin("docker"):
        _unavailable("--docker-hosts needs the pytest-docker plugin")
    services = request.getfixturevalue("docker_services")
    port = services.port_for(DOCKER_SERVICE, 22)
    client.add_host(DOCKER_SERVICE, "127.0.0.1", port, REMOTE_USER, host_key,
                    refused_port=_free_loopback_port())
    compose = [*shlex.split(request.getfixturevalue("docker_compose_command")), "-f", str(COMPOSE_FILE),
               "-p", request.getfixturevalue("docker_compose_project_name")]
    host = DockerHost(compose, alias=DOCKER_SERVICE, address="127.0.0.1", port=port,
                      hostname="sik-btest", user=REMOTE_USER, ssh_config=client.config,
                      env_prefix=REMOTE_ENV_PREFIX)
    _wait_for_ssh(host, timeout=60)
    return host
