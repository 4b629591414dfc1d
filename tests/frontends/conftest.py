"""Fixtures for the front-end suite: real Jupyter front ends (JupyterLab in Chromium, nbclient,
Kernel Gateway) driving an SSH kernel on the netns test host.

The host fixtures (``host_factory``, ``ssh_host``, the autouse ``jupyter_env``) are those of
tests/integration/conftest.py, loaded from that file and re-exported: pytest only lets a conftest's
fixtures reach the tests below it, and tests/integration/conftest.py stays as it is.  (A session
running both suites therefore builds one ``btest`` host for each; that costs about a second.)

Missing front-end prerequisites (Chromium, chromedriver, the PyPI packages of the ``frontend``
extra) skip locally and fail under CI=true, as the integration hosts do (frontend_support.py).
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from frontend_support import ARTIFACTS
from kernels import manage, wait_remote_clean

HERE = Path(__file__).resolve().parent


def _load_integration_conftest():
    name = "sik_integration_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "integration" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


_integration = _load_integration_conftest()
host_factory = _integration.host_factory
ssh_host = _integration.ssh_host
jupyter_env = _integration.jupyter_env  # autouse there, and so here
docker_compose_file = _integration.docker_compose_file
# Tests marked both_transports run on OpenSSH and on paramiko (with no ssh client on PATH).
transport = _integration.transport  # autouse there, and so here
path_without_ssh = _integration.path_without_ssh
pytest_generate_tests = _integration.pytest_generate_tests

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/frontends ``frontend`` and ``integration`` (it needs the hosts)."""
    for item in items:
        if Path(str(item.path)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.frontend)
            item.add_marker(pytest.mark.integration)


@dataclass
class SSHKernelspec:
    """The kernelspec ``manage`` wrote for the test host; JUPYTER_PATH points at it."""

    name: str
    display_name: str
    jupyter_path: Path


@pytest.fixture
def ssh_kernelspec(ssh_host, jupyter_env, monkeypatch: pytest.MonkeyPatch) -> Iterator[SSHKernelspec]:
    """Register the test host with the real ``manage`` CLI, as a user would, into a private
    prefix on JUPYTER_PATH (so every Jupyter process the test starts sees it, and only that).
    After the test, nothing may be left running on the remote."""
    prefix = jupyter_env.data.parent / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix)
    jupyter_path = prefix / "share" / "jupyter"
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    yield SSHKernelspec(f"ssh_{ssh_host.alias}", f"SSH {ssh_host.alias}", jupyter_path)
    left = wait_remote_clean(ssh_host)
    assert not left, f"left on the remote after the test: {left}"


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    """``test-artifacts/<test name>/`` (emptied first); tests write to it when they fail."""
    path = ARTIFACTS / request.node.name
    shutil.rmtree(path, ignore_errors=True)
    return path
