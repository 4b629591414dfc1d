"""Back at once (issue 13): the kernel answers again soon after the network returns, with a cell
still running, for both kinds of cut and both transports.

A cut here lasts until the proxy has given the connection up and is waiting for the host (its
"reconnecting" line, then a few seconds more), so what is measured is the way back: noticing the
network (a netlink change for the route-gone cut, a reachability probe for the blackhole), a new
login, the forwards, the attach. "Answers" means a kernel_info_request on the control channel:
the shell channel is busy with the cell. The bound asserted (ANSWER_BOUND) leaves room for a
loaded 2-core machine; bench/reconnect.py reports the real figures.
"""
from __future__ import annotations

import queue
import time

import pytest

from kernels import CUT_KINDS, Kernel, Watcher, cut, iopub_back_after, started_kernel

pytestmark = pytest.mark.slow

#: Seconds from the restore to the control channel's answer that the test insists on (the bench
#: measures 0.15-0.45 s on the LAN test host; before issue 13: 1.1-2.6 s).
ANSWER_BOUND = 1.5
#: How long the link stays cut after the proxy said it is reconnecting: past the 3 s in which it
#: asks the old connection for a last answer, so the way back needs a new connection.
AFTER_NOTICED = 4.0
#: Cuts tried: a loaded 2-core CI machine (6 test workers) once took 2.2 s on one way back; the
#: second cut shows whether the way back is slow or the machine was.
TRIES = 2


@pytest.fixture
def kernel(ssh_host, tmp_path, jupyter_env):
    with started_kernel(ssh_host, tmp_path, jupyter_env, "bo") as k:
        yield k


def control_answer(kernel: Kernel, since: float, timeout: float = 30) -> float:
    """Send kernel_info on the control channel every 20 ms until one is answered; seconds from
    ``since`` (monotonic) to that answer."""
    kc = kernel.kc
    sent = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.session.msg("kernel_info_request")
        kc.control_channel.send(msg)
        sent.add(msg["header"]["msg_id"])
        try:
            reply = kc.control_channel.get_msg(timeout=0.02)
        except queue.Empty:
            continue
        if reply["parent_header"].get("msg_id") in sent:
            return time.monotonic() - since
    raise AssertionError(f"the control channel did not answer within {timeout} s\n{kernel.log()}")


def wait_log(kernel: Kernel, text: str, after: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = kernel.log()
        at = log.find(text, after)
        if at >= 0:
            return at + len(text)
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the proxy log\n{kernel.log()}")


@pytest.mark.both_transports
@pytest.mark.parametrize("kind", CUT_KINDS)
def test_the_kernel_answers_at_once_when_the_network_returns(kind, kernel, ssh_host, transport):
    pid = kernel.remote_pid()
    kernel.execute("kept = 'yes'")
    cell = kernel.kc.execute("import time\ntry:\n    time.sleep(600)\nexcept KeyboardInterrupt:\n    print('interrupted')")
    kernel.wait_busy(cell)
    control_answer(kernel, time.monotonic())  # the control channel answers while the cell runs
    watcher = Watcher(kernel)
    offset = len(kernel.log())
    times = []
    for _ in range(TRIES):  # a second cut only if the first way back was slower than the bound
        with cut(ssh_host, kind):
            offset = wait_log(kernel, "reconnecting:", offset)
            time.sleep(AFTER_NOTICED)
            assert pid in ssh_host.remote_pids("ipykernel_launcher"), "the kernel died during the cut"
            back = time.monotonic()  # counted from before the restore: its own commands count against us
        times.append(control_answer(kernel, back))
        print(f"\n{transport}, {kind} cut: the control channel answered {times[-1]:.3f} s after the link came "
              f"back, a cell running")
        offset = wait_log(kernel, "up: reconnected", offset)
        if times[-1] <= ANSWER_BOUND:
            break
    assert min(times) <= ANSWER_BOUND, kernel.log()
    # The cell is still the same one, in the same kernel: it can be interrupted and its reply comes.
    time.sleep(0.3)  # shell and stdin reopen once the iopub subscriber is back
    kernel.km.interrupt_kernel()
    reply = kernel.wait_reply(cell, timeout=30)
    watcher.stop()
    assert reply["status"] in ("ok", "error"), reply
    # Values are read from the output: wait until iopub carries messages again (its subscriber
    # may still be resubscribing, and what is published before that is lost: tests of issue 18).
    iopub_back_after(kernel, time.monotonic())
    assert kernel.remote_pid() == pid and kernel.value("kept") == "yes"


@pytest.fixture
def no_streamlocal(ssh_host):
    """The host's sshd with ``AllowStreamLocalForwarding no`` from the next restart on (as on
    servers that forbid it); the usual config, and an sshd running it, afterwards."""
    config = ssh_host.dir / "sshd_config"
    usual = config.read_text()
    assert "AllowStreamLocalForwarding yes" in usual
    config.write_text(usual.replace("AllowStreamLocalForwarding yes", "AllowStreamLocalForwarding no"))
    try:
        yield
    finally:
        config.write_text(usual)
        ssh_host.restart_sshd()


@pytest.mark.both_transports
def test_a_server_without_streamlocal_forwarding_gets_the_remote_relay(kernel, ssh_host, no_streamlocal):
    """Every connection dropped by an sshd that now refuses unix-socket channels: the re-attach
    falls back on the remote python relay, says so once, and the kernel is the same."""
    pid = kernel.remote_pid()
    watcher = Watcher(kernel)
    offset = len(kernel.log())
    t0 = time.monotonic()
    ssh_host.restart_sshd(drop_connections=True)
    answered = control_answer(kernel, t0)
    wait_log(kernel, "up: reconnected", offset)
    watcher.stop()
    log = kernel.log()[offset:]
    assert log.count("does not forward unix sockets") == 1, log
    print(f"\nno streamlocal: the control channel answered {answered:.3f} s after sshd dropped the connections")
    iopub_back_after(kernel, time.monotonic())  # values are read from the output (see above)
    assert kernel.remote_pid() == pid
