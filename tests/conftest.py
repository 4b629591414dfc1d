"""Top-level test configuration.

Command-line options live here, not in tests/integration/conftest.py: pytest
only calls pytest_addoption in conftests it loads at startup, and a bare
``pytest --docker-hosts`` (testpaths = tests) loads tests/conftest.py but not
the one in tests/integration, so the option would be "unrecognized" there.
"""
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--docker-hosts`` (see docker/README.md)."""
    parser.getgroup("ssh-ipykernel").addoption(
        "--docker-hosts", action="store_true", default=False,
        help="run the integration tests against the Docker test host in docker/ "
             "(pytest-docker) instead of network-namespace hosts")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Longest first: tests marked ``slow`` or ``frontend`` (fault tests with real timers, the
    browser) before the rest, so that parallel workers start them early and overlap them, and the
    short tests fill the gaps at the end. The order within each part is unchanged."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") or item.get_closest_marker("frontend") else 1)


#: Set in the environment of this test run, so that kernels started locally by the unit
#: tests can be told apart from those of another test run on the same machine.
RUN_MARKER = "SSH_IPYKERNEL_TEST_RUN"


def pytest_configure(config: pytest.Config) -> None:
    import os

    os.environ[RUN_MARKER] = str(os.getpid())


def _ours(pid: str) -> bool:
    """Whether a process belongs to this test run: inside one of our test hosts, or started
    (directly or not) from this process's environment."""
    import os

    try:
        from nshosts import OWNED_NETNS
    except ImportError:  # pragma: no cover - integration helpers not importable
        OWNED_NETNS = set()
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
        if (st.st_ino, st.st_dev) in OWNED_NETNS:
            return True
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{RUN_MARKER}={os.getpid()}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def _leaked_kernels() -> list:
    """Processes of remote-style kernels (``-f .../kernel-ssh-*.json``) of this run still running."""
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if (not zombie and b"ipykernel_launcher" in argv and any(b"/kernel-ssh-" in a for a in argv)
                and _ours(pid)):
            found.append((int(pid), b" ".join(argv).decode(errors="replace")))
    return found


#: Leaks the xdist workers reported (pytest-xdist: each worker is a session of its own, whose
#: exit status the controller ignores; the guard's verdict travels in ``workeroutput``).
_WORKER_LEAKS: list = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - xdist's WorkerController
    leaked = getattr(node, "workeroutput", {}).get("sik_leaked_kernels")
    if leaked:
        _WORKER_LEAKS.append(f"[{node.gateway.id}]\n{leaked}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may leave a kernel behind: kill leftovers and fail the run if there were any.

    Under xdist every worker checks its own kernels (they carry the worker's RUN_MARKER, or
    live in its test hosts) and reports them to the controller, which fails the run."""
    import os
    import signal
    import time

    if _WORKER_LEAKS:
        session.config.get_terminal_writer().line(
            "\nkernels leaked by the tests (killed by their worker):\n" + "\n".join(_WORKER_LEAKS), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

    deadline = time.monotonic() + 10  # shutdowns still in progress get a moment
    leaked = _leaked_kernels()
    while leaked and time.monotonic() < deadline:
        time.sleep(0.5)
        leaked = _leaked_kernels()
    for pid, _ in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if leaked:
        lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in leaked)
        if hasattr(session.config, "workeroutput"):  # an xdist worker: the controller reports it
            session.config.workeroutput["sik_leaked_kernels"] = lines
        session.config.get_terminal_writer().line(f"\nkernels leaked by the tests (killed now):\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
