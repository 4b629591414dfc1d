"""Nothing lost (issue 13): what is in flight between Jupyter and the kernel during a network cut
arrives after it, in order, exactly once.

Each test runs a cell through a real cut of the test host (kernels.cut: a blackhole route or the
link going down) and looks only at what a Jupyter client receives: every ``line <n>`` the cell
printed, in order and without a duplicate, its execute_reply and its final idle status; requests
and input replies sent while offline reach the kernel once the link is back; an interrupt asked
while offline is delivered; two clients each get everything; output beyond the proxy's
``--output-buffer`` is dropped oldest first, with a notice. The kernel is the same process
afterwards, with its state. Cuts last 20 s (past the proxy's 6 s loss timeout), one 2 minutes
(past ssh's ServerAlive and the keeper's 30 s client timeout, within the kernel's grace period).
"""
from __future__ import annotations

import os
import queue
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from kernels import (
    AGENT_PATTERN, CUT_KINDS, NOTICE, Cell, Kernel, Watcher, cell_through_cut, client_of, compress, cut, printing_cell, start_proxy,
    started_kernel, stop_proxy, wait_for,
)

pytestmark = pytest.mark.slow

#: Seconds the link stays cut in the tests (but the 2-minute one).
CUT = 20.0
#: Seconds from the restore within which output printed during the cut must start arriving.
BACK_WITHIN = 10.0


@pytest.fixture
def kernel(ssh_host, tmp_path, jupyter_env):
    with started_kernel(ssh_host, tmp_path, jupyter_env, "rs") as k:
        yield k


def assert_all_lines(cell: Cell, count: int, log: str) -> None:
    """``line 0`` ... ``line <count-1>`` each arrived exactly once, in order."""
    numbers = cell.numbers()
    assert numbers == list(range(count)), (
        f"expected lines 0-{count - 1} once each, in order; got {len(numbers)}: {compress(numbers)}\n{log}")


def assert_came_back(cell: Cell, t_down: float, t_up: float, log: str) -> None:
    """The cut was real (nothing arrived during it, but what was in flight as it began) and the
    cell's reply and idle came after it."""
    during = [n for at, n in zip((at for at, _ in cell.lines), cell.numbers()) if t_down + 1 < at < t_up]
    assert not during, f"lines arrived during the cut: the link was not cut? {during}"
    assert cell.reply is not None and cell.reply["status"] == "ok", f"{cell.reply}\n{log}"
    assert cell.reply_at > t_up and cell.idle_at > t_up


def same_kernel(kernel: Kernel, pid: int) -> None:
    assert kernel.remote_pid() == pid, f"a different kernel after the cut\n{kernel.log()}"
    assert kernel.value("kept") == "before the cut"


def remember(kernel: Kernel) -> int:
    """The kernel's pid, with a variable set (same_kernel() checks both after the cut)."""
    kernel.execute("kept = 'before the cut'")
    return kernel.remote_pid()


@pytest.mark.both_transports
@pytest.mark.parametrize("kind", CUT_KINDS)
def test_a_cell_printing_through_a_20_s_cut_loses_nothing(kind, kernel, ssh_host):
    """40 lines, one every 0.8 s, the link cut after the 6th for 20 s: all 40 arrive, once
    each, in order; its reply and idle follow."""
    pid = remember(kernel)
    watcher = Watcher(kernel)
    cell = Cell(kernel.kc, printing_cell(40, 0.8))
    t_down, t_up = cell_through_cut(cell, ssh_host, after_lines=6, seconds=CUT, kind=kind, log=kernel.log)
    watcher.stop()
    assert_all_lines(cell, 40, kernel.log())
    assert_came_back(cell, t_down, t_up, kernel.log())
    after = cell.arrived_after(t_up)
    first_back = min(at for at, _ in cell.lines if at > t_up) - t_up
    print(f"\n{kind} cut of {CUT:.0f} s: {len(after)} of 40 lines arrived after it, the first "
          f"{first_back:.2f} s after the link came back")
    # Lines 6 to ~30 were printed while the link was down.
    assert len(after) >= 40 - 6 - 2, compress(after)
    assert first_back < BACK_WITHIN, kernel.log()
    same_kernel(kernel, pid)


@pytest.mark.both_transports
def test_a_cell_that_ends_during_the_cut_gets_its_lines_and_its_reply(kernel, ssh_host):
    """10 lines, one every 0.5 s, the link cut after the 2nd: the cell ends 4 s into the cut; all
    10 lines, its reply and its idle arrive once the link is back."""
    pid = remember(kernel)
    watcher = Watcher(kernel)
    cell = Cell(kernel.kc, printing_cell(10, 0.5))
    t_down, t_up = cell_through_cut(cell, ssh_host, after_lines=2, seconds=CUT, log=kernel.log)
    watcher.stop()
    assert_all_lines(cell, 10, kernel.log())
    assert_came_back(cell, t_down, t_up, kernel.log())
    assert len(cell.arrived_after(t_up)) >= 10 - 2 - 2
    print(f"\ncell ended during the cut: its reply came {cell.reply_at - t_up:.2f} s after the link came back")
    same_kernel(kernel, pid)


@pytest.mark.both_transports
def test_a_cell_run_while_offline_runs_when_the_link_is_back(kernel, ssh_host):
    """The cell is sent once the proxy knows the link is gone ("reconnecting" in its log): it is
    delivered, runs in the same kernel, and its output and reply arrive after the cut."""
    pid = remember(kernel)
    kernel.execute("counter = 1")
    watcher = Watcher(kernel)
    seen = kernel.log().count("reconnecting")
    with cut(ssh_host) as t_down:
        wait_for(kernel.log_path, "reconnecting", timeout=CUT, count=seen + 1)
        cell = Cell(kernel.kc, "counter += 1\nprint('line %d' % counter, flush=True)")
        while time.monotonic() < t_down + CUT:
            cell.pump()
    t_up = time.monotonic()
    assert not cell.lines and cell.reply is None, "the cell answered while the link was cut"
    cell.wait(lambda: cell.done, 60, "the offline cell's reply and idle", kernel.log)
    watcher.stop()
    assert cell.numbers() == [2], f"{cell.summary()}\n{kernel.log()}"
    assert cell.reply["status"] == "ok", cell.reply
    print(f"\ncell sent while offline: its reply came {cell.reply_at - t_up:.2f} s after the link came back")
    assert kernel.value("counter") == "2"  # it ran exactly once
    same_kernel(kernel, pid)


@pytest.mark.both_transports
@pytest.mark.parametrize("when", ["reply during the cut", "request during the cut"])
def test_input_across_a_cut(when, kernel, ssh_host):
    """input(): either the kernel asked before the cut and the answer is typed during it, or the
    kernel asks during the cut (the request reaches the client after it) and the answer is typed
    then. Either way the cell completes with the value typed."""
    pid = remember(kernel)
    wait = 0 if when.startswith("reply") else 4  # seconds before the cell asks
    code = f"import time\ntime.sleep({wait})\nname = input('name? ')\nprint('line 1', name, flush=True)"
    watcher = Watcher(kernel)
    cell = Cell(kernel.kc, code, allow_stdin=True)
    if wait == 0:
        request = input_request(kernel, cell, timeout=30)
    else:
        cell.wait(lambda: cell.busy_at, 30, "the cell to start", kernel.log)
    with cut(ssh_host) as t_down:
        if wait == 0:
            time.sleep(5)
            kernel.kc.input("ada")
        while time.monotonic() < t_down + CUT:
            cell.pump()
            with_request = drain_stdin(kernel)
            assert not with_request, "an input request came through the cut link"
    t_up = time.monotonic()
    if wait:
        request = input_request(kernel, cell, timeout=30)
        print(f"\ninput requested during the cut: the request came {time.monotonic() - t_up:.2f} s after "
              "the link came back")
        kernel.kc.input("ada")
    assert request["prompt"] == "name? "
    cell.wait(lambda: cell.done, 60, "the reply of the cell reading input", kernel.log)
    watcher.stop()
    assert [line for _, line in cell.lines] == ["line 1 ada"], f"{cell.summary()}\n{kernel.log()}"
    assert cell.reply["status"] == "ok", cell.reply
    assert cell.reply_at > t_up
    same_kernel(kernel, pid)


def input_request(kernel: Kernel, cell: Cell, timeout: float) -> dict:
    """The input_request of ``cell`` on the stdin channel (iopub pumped meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kernel.kc.get_stdin_msg(timeout=0.1)
        except queue.Empty:
            cell.pump(timeout=0)
            continue
        if msg["msg_type"] == "input_request" and msg["parent_header"].get("msg_id") == cell.msg_id:
            return msg["content"]
    raise AssertionError(f"no input_request within {timeout} s ({cell.summary()})\n{kernel.log()}")


def drain_stdin(kernel: Kernel) -> list:
    found = []
    try:
        while True:
            found.append(kernel.kc.get_stdin_msg(timeout=0))
    except queue.Empty:
        return found


@pytest.mark.timeout(420)
def test_a_two_minute_cut_loses_nothing(kernel, ssh_host):
    """THE SLOW ONE (about 2.5 minutes). 140 lines, one a second, the link cut after the 5th for
    120 s: past ssh's ServerAlive (45 s) and the keeper's client timeout (30 s by default: it
    forgets the silent proxy), well within the kernel's grace period (1 h by default). All 140
    lines still arrive, in order, once each, and the same kernel carries on."""
    pid = remember(kernel)
    watcher = Watcher(kernel)
    cell = Cell(kernel.kc, printing_cell(140, 1.0))
    t_down, t_up = cell_through_cut(cell, ssh_host, after_lines=5, seconds=120, log=kernel.log)
    watcher.stop()
    assert_all_lines(cell, 140, kernel.log())
    assert_came_back(cell, t_down, t_up, kernel.log())
    assert len(cell.arrived_after(t_up)) >= 140 - 5 - 2
    first_back = min(at for at, _ in cell.lines if at > t_up) - t_up
    print(f"\n120 s cut: output resumed {first_back:.2f} s after the link came back")
    assert first_back < BACK_WITHIN, kernel.log()
    same_kernel(kernel, pid)


@pytest.mark.both_transports
def test_two_clients_each_get_every_line_through_a_cut(kernel, ssh_host):
    """A notebook and a ``jupyter console --existing`` on one kernel: the cell one of them runs
    prints through a cut, and each receives all of its lines, once, in order, and its idle."""
    pid = remember(kernel)
    # A client of its own (its own session, as another program has) on the same connection file.
    other = client_of(Path(kernel.km.connection_file))
    try:
        watcher = Watcher(kernel)
        cell = Cell(kernel.kc, printing_cell(30, 0.8))
        seen = Cell(other, msg_id=cell.msg_id)
        t_down, t_up = cell_through_cut(cell, ssh_host, after_lines=5, seconds=CUT, log=kernel.log)
        seen.wait(lambda: seen.idle_at, 30, "the other client's idle", kernel.log)
        watcher.stop()
    finally:
        other.stop_channels()
    assert_all_lines(cell, 30, kernel.log())
    assert_came_back(cell, t_down, t_up, kernel.log())
    numbers = seen.numbers()
    assert numbers == list(range(30)), f"the other client got {len(numbers)}: {compress(numbers)}\n{kernel.log()}"
    assert seen.reply is None  # the reply goes to the client that asked
    same_kernel(kernel, pid)


@pytest.mark.both_transports
def test_an_interrupt_asked_while_offline_is_delivered_when_the_link_is_back(kernel, ssh_host):
    """KernelManager.interrupt_kernel() (SIGINT to the proxy) during the cut: the proxy says it
    keeps it, and once reconnected the endless cell ends with KeyboardInterrupt."""
    pid = remember(kernel)
    watcher = Watcher(kernel)
    cell = Cell(kernel.kc, "import time\nprint('line 0', flush=True)\nwhile True:\n    time.sleep(0.1)")
    cell.wait(lambda: cell.lines, 30, "the endless cell to start", kernel.log)
    seen = kernel.log().count("reconnecting")
    with cut(ssh_host) as t_down:
        wait_for(kernel.log_path, "reconnecting", timeout=CUT, count=seen + 1)
        offset = len(kernel.log())
        kernel.km.interrupt_kernel()
        while time.monotonic() < t_down + CUT:
            cell.pump()
    t_up = time.monotonic()
    assert cell.reply is None, f"the cell ended during the cut: {cell.reply}"
    cell.wait(lambda: cell.done, 30, "the interrupted cell's reply after the cut", kernel.log)
    watcher.stop()
    log = kernel.log()
    assert cell.reply["status"] == "error" and cell.reply["ename"] == "KeyboardInterrupt", f"{cell.reply}\n{log}"
    assert [e["ename"] for e in cell.errors] == ["KeyboardInterrupt"], cell.errors
    said = [line for line in log[offset:].splitlines() if re.search("interrupt", line, re.I)]
    assert said, f"the proxy did not log the interrupt it got while reconnecting\n{log}"
    print(f"\ninterrupt during the cut: the cell ended {cell.reply_at - t_up:.2f} s after the link came back; "
          f"the proxy said: {said[0]}")
    same_kernel(kernel, pid)


def test_a_keeper_that_stalls_during_a_flood_loses_nothing(kernel, ssh_host):
    """The keeper is stopped (SIGSTOP) for half a second, four times, while a cell prints 20000
    lines as fast as it can: every line, the reply and the final idle arrive. (With ZeroMQ's
    default queue of 1000 messages in the kernel's publisher, each stall lost some 2000 lines
    and the idle, silently: the keeper is a subscriber that must never be slow.)"""
    count = 20000
    cell = Cell(kernel.kc, f"import time\ntime.sleep(1)\nfor n in range({count}):\n"
                           f"    print('line %d ' % n + 'x' * 200, flush=True)")
    # The keeper, not the kernel's parent: a warm kernel's parent is its pool.
    keeper = int(re.search(r"keeper pid (\d+)", kernel.log()).group(1))
    assert keeper in ssh_host.remote_pids(AGENT_PATTERN), kernel.log()
    stalls = []

    def stall() -> None:
        time.sleep(1.3)  # the cell is printing by then
        for _ in range(4):
            os.kill(keeper, signal.SIGSTOP)
            time.sleep(0.5)
            os.kill(keeper, signal.SIGCONT)
            stalls.append(len(cell.lines))
            time.sleep(0.3)

    staller = threading.Thread(target=stall)
    staller.start()
    try:
        cell.wait(lambda: cell.done, 120, "the cell's reply and idle", kernel.log)
    finally:
        staller.join()
    print(f"\nfour 0.5 s keeper stalls, at lines {stalls}: {len(cell.numbers())} of {count} lines arrived")
    assert stalls and stalls[-1] < count, f"the cell ended before the last stall: {stalls}"
    assert_all_lines(cell, count, kernel.log())
    assert cell.reply["status"] == "ok" and not cell.notices


# ------------------------------------------------------------------ the proxy by hand
#: Size of each line printed during the cut by test_output_beyond_the_buffer_...
BIG_SIZE = 1000


#: What a cut link holds when it goes (written, neither delivered nor droppable): the SSH channel's
#: window (OpenSSH 2 MB; our paramiko backend 8 MB) and the sockets' buffers.
IN_FLIGHT = {"openssh": 4 << 20, "paramiko": 10 << 20}


@pytest.mark.both_transports
@pytest.mark.parametrize("limit, mib", [("1M", 1), ("8M", 8)])
def test_output_beyond_the_buffer_is_dropped_oldest_first_with_a_notice(limit, mib, ssh_host, conn, transport,
                                                                         tmp_path, nothing_left):
    """``--output-buffer`` (1M, 8M) and about 3 times as much printed during a cut: older output
    is dropped; the client is told so on iopub (a stderr stream from ssh_ipykernel, "... N output
    messages ... dropped") for every line it misses, and the proxy's log says so; the newest
    lines all arrive, in order, once, and so does the cell's final idle.

    What had already gone into the SSH connection when it was cut (ssh's channel window, socket
    buffers: about 1 MB) cannot be dropped any more: it arrives, then a gap with its notice, then
    the newest lines; several rounds of dropping may leave several gaps, each with a notice."""
    in_flight = IN_FLIGHT[transport]
    flood = 2 * ((mib << 20) + in_flight) // (BIG_SIZE + 10)  # twice what can be kept
    log = tmp_path / "proxy.log"
    proc = start_proxy(ssh_host, conn, log, "--output-buffer", limit)
    kc = None
    try:
        kc = client_of(conn)
        code = ("import time\nfor n in range(3):\n    print('line %d' % n, flush=True)\n    time.sleep(1)\n"
                "time.sleep(4)\n"  # the cut lands here; then the flood
                f"for n in range(3, {flood + 3}):\n    print('line %d ' % n + 'x' * {BIG_SIZE}, flush=True)\n")
        cell = Cell(kc, code)

        def text() -> str:
            return log.read_text(errors="replace")

        t_down, t_up = cell_through_cut(cell, ssh_host, after_lines=3, seconds=CUT, log=text)
        # The keeper's own lines reach the proxy's log a moment later than the output.
        deadline = time.monotonic() + 15
        while "dropped" not in text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if kc is not None:
            kc.stop_channels()
        stop_proxy(proc, log)
    numbers = cell.numbers()
    last = flood + 2
    missing = flood + 3 - len(numbers)
    dropped = sum(int(n) for notice in cell.notices for n in re.findall(r"(\d+) output messages", notice))
    received = sum(len(line) + 1 for at, line in cell.lines if at > t_up)
    print(f"\n--output-buffer {limit}, {(flood * (BIG_SIZE + 10)) >> 10} KiB printed during the cut: "
          f"{received >> 10} KiB arrived after it, lines {compress(numbers)}; {len(cell.notices)} notices "
          f"for {dropped} messages dropped")
    assert cell.reply["status"] == "ok", cell.reply
    assert numbers[:3] == [0, 1, 2], compress(numbers)
    assert numbers == sorted(set(numbers)), f"out of order or duplicated: {compress(numbers)}"
    assert numbers[-1] == last, f"the newest lines did not arrive: {compress(numbers)}\n{text()}"
    assert missing > 0, "nothing was dropped: the buffer is not bounded by --output-buffer"
    tail = next(i for i in range(len(numbers) - 1, 0, -1) if numbers[i - 1] != numbers[i] - 1)
    assert len(numbers) - tail >= 100, f"only the last {len(numbers) - tail} lines arrived whole: {compress(numbers)}"
    # Kept: the buffer, plus what was in flight on the cut link when it went.
    assert received < (mib << 20) + in_flight, (
        f"{received} bytes arrived after the cut, more than the {limit} buffer and what a cut link holds")
    assert cell.notices and all(NOTICE in notice and "dropped" in notice for notice in cell.notices), cell.notices
    assert dropped >= missing, (f"{missing} lines missing but the notices account for {dropped}: "
                                f"{missing - dropped} vanished silently ({compress(numbers)})\n{text()}")
    assert [line for line in text().splitlines() if "dropped" in line], f"the proxy's log does not say\n{text()}"
