"""The proxy run by hand (``python -m ssh_ipykernel ... -f conn.json``), without KernelManager."""
from __future__ import annotations

import contextlib
import signal
import time

import pytest
from jupyter_client import BlockingKernelClient

from kernels import (
    AGENT_PATTERN, cut, local_ssh_children, read_log, start_proxy, wait_for, wait_remote_clean,
)

pytestmark = pytest.mark.both_transports


def test_by_hand_with_the_default_python(ssh_host, conn, tmp_path, jupyter_env):
    log = tmp_path / "proxy.log"
    proc = start_proxy(ssh_host, conn, log, python=None)
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


#: Phases of the start-up a SIGTERM can land in, each held open long enough to be hit for sure,
#: and the log line that shows the proxy is in it: (extra proxy options, the line, the next line).
PHASES = {
    # the host does not answer (blackhole cut): ssh is still connecting
    "connect": ((), "connecting to btest", "connected in"),
    # logged in, the remote login shell runs a slow --pre-command: no agent yet
    "remote shell": (("--pre-command", "sleep 4"), "launching kernel", "launched in"),
    # (The agent's own run, between "launching" and "launched", lasts ~0.2 s and cannot be held
    # open without a hook in the package; "launched" to "up" is milliseconds.)
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_sigterm_during_start_up_leaves_nothing(ssh_host, conn, tmp_path, jupyter_env, phase):
    """Jupyter may stop a kernel that is still starting (the user closed the notebook): the
    proxy ends at once with exit code 0, whatever it was doing, and leaves nothing anywhere."""
    extra, shown, next_line = PHASES[phase]
    log = tmp_path / "proxy.log"
    with cut(ssh_host) if phase == "connect" else contextlib.nullcontext():
        proc = start_proxy(ssh_host, conn, log, "--timeout", "30", *extra)
        try:
            wait_for(log, shown)
            time.sleep(0.5)
            assert proc.poll() is None, read_log(log)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(15)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = read_log(log)
    assert code == 0, text
    # Connecting is simply abandoned; a started remote session is stopped and waited for
    # (proxy.SHUTDOWN_TIMEOUT, 10 s).
    assert took < (5 if phase == "connect" else 12), text
    assert "start-up cancelled by SIGTERM" in text, text
    assert next_line not in text, f"the signal came after the {phase} phase:\n{text}"
    assert "Traceback" not in text, text
    assert not wait_remote_clean(ssh_host, timeout=15), text
    assert not ssh_host.remote_pids(r"kernel-ssh-|" + AGENT_PATTERN), text
    assert not local_ssh_children(str(jupyter_env.runtime))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["blackhole", "down"])
def test_connect_timeout_is_reported(ssh_host, conn, tmp_path, jupyter_env, kind):
    """Exit 23 either way: a host that does not answer, and one with no route to it."""
    log = tmp_path / "proxy.log"
    with cut(ssh_host, kind):
        t0 = time.monotonic()
        proc = start_proxy(ssh_host, conn, log, "--timeout", "3", python=None)
        code = proc.wait(30)
    assert code == 23, read_log(log)
    if kind == "blackhole":
        assert "did not answer within 3 s" in read_log(log)
        assert 2.5 < time.monotonic() - t0 < 15
    assert not local_ssh_children(str(jupyter_env.runtime))
