"""The proxy run by hand (``python -m ssh_ipykernel ... -f conn.json``), without KernelManager."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from kernels import local_ssh_children, transport_args, wait_remote_clean

pytestmark = pytest.mark.both_transports


@contextlib.contextmanager
def link_cut(host) -> Iterator[None]:
    """The host's network link is down inside the block, and always restored after it."""
    try:
        host.link_down()
    except NotImplementedError:
        pytest.skip("this test host cannot cut its link")
    try:
        yield
    finally:
        host.link_up()


@pytest.fixture
def conn(tmp_path: Path) -> Path:
    fname, _ = write_connection_file(str(tmp_path / "kernel-byhand.json"), ip="127.0.0.1")
    return Path(fname)


def start_proxy(host, conn: Path, log: Path, *args: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "ssh_ipykernel", "--host", host.alias, "--ssh-config",
            str(host.ssh_config), *transport_args(), *args, "-f", str(conn)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_by_hand_with_the_default_python(ssh_host, conn, tmp_path, jupyter_env):
    log = tmp_path / "proxy.log"
    proc = start_proxy(ssh_host, conn, log)
    kc = BlockingKernelClient(connection_file=str(conn))
    kc.load_connection_file()
    # No heartbeat: a standalone client started before the kernel has booted would read the
    # missed beats of the boot as a dead kernel (jupyter_client does the same with a local one).
    kc.start_channels(hb=False)
    try:
        kc.wait_for_ready(timeout=60)
        out = []
        kc.execute_interactive("print(__import__('socket').gethostname())", timeout=30,
                               output_hook=lambda m: m["msg_type"] == "stream" and out.append(m["content"]["text"]))
        assert "".join(out).strip() == ssh_host.hostname
    finally:
        kc.stop_channels()
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, log.read_text()
    assert not wait_remote_clean(ssh_host, timeout=10)
    assert not local_ssh_children(str(jupyter_env.runtime))


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.6])
def test_sigterm_during_start_up_leaves_nothing(ssh_host, conn, tmp_path, jupyter_env, delay):
    """Jupyter may stop a kernel that is still starting (the user closed the notebook)."""
    log = tmp_path / "proxy.log"
    proc = start_proxy(ssh_host, conn, log, "--python", ssh_host.env_prefix)
    time.sleep(delay)  # somewhere in connect, launch or forwarding
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) is not None
    assert "Traceback" not in log.read_text(), log.read_text()
    assert not wait_remote_clean(ssh_host, timeout=15), log.read_text()
    assert not local_ssh_children(str(jupyter_env.runtime))


@pytest.mark.slow
def test_sigterm_while_the_host_does_not_answer(ssh_host, conn, tmp_path, jupyter_env):
    log = tmp_path / "proxy.log"
    with link_cut(ssh_host):
        proc = start_proxy(ssh_host, conn, log, "--timeout", "30")
        time.sleep(2)
        assert proc.poll() is None, "the proxy should still be trying to connect"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        assert time.monotonic() - t0 < 5
    assert not local_ssh_children(str(jupyter_env.runtime))
    assert "cancelled by SIGTERM" in log.read_text()


@pytest.mark.slow
def test_connect_timeout_is_reported(ssh_host, conn, tmp_path, jupyter_env):
    log = tmp_path / "proxy.log"
    with link_cut(ssh_host):
        proc = start_proxy(ssh_host, conn, log, "--timeout", "3")
        code = proc.wait(30)
    assert code == 23, log.read_text()
    assert "did not answer within 3 s" in log.read_text()
    assert not local_ssh_children(str(jupyter_env.runtime))
