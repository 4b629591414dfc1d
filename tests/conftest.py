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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may leave a kernel behind: kill leftovers and fail the run if there were any."""
    import os
    import signal
    import time

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
        session.config.get_terminal_writer().line(f"\nkernels leaked by the tests (killed now):\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
