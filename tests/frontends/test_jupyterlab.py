"""JupyterLab in a real (headless) browser: pick "SSH btest" in the kernel picker, run code on the
remote host, interrupt a long cell from the toolbar, restart the kernel from the toolbar.

On failure the screenshot (and the page's HTML) and the server log are kept under
test-artifacts/<test name>/, and the assertion message says where.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from frontend_support import require_executables, require_modules
from jupyter_servers import JupyterServer, start_jupyterlab
from lab_page import CHROMEDRIVER, CHROMIUM, LabPage, start_chromium
from kernels import cut, wait_remote_clean

WHERE = "import socket, os; print(socket.gethostname(), os.getpid())"


@pytest.fixture
def lab(ssh_kernelspec, tmp_path) -> Iterator[Tuple[JupyterServer, LabPage]]:
    """A JupyterLab server that sees the SSH kernelspec (and the venv's own python3), and a
    headless Chromium to look at it with."""
    require_modules("jupyterlab", "selenium")
    require_executables(CHROMIUM, CHROMEDRIVER)
    root = tmp_path / "notebooks"
    root.mkdir()
    with concurrent.futures.ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as stack:
        browser = pool.submit(start_chromium)  # a few seconds: meanwhile the server starts
        stack.callback(lambda: None if browser.exception() else browser.result().quit())
        server = stack.enter_context(start_jupyterlab(root, tmp_path / "jupyterlab.log"))
        yield server, LabPage(browser.result())


class Steps:
    """Named steps; a failing one saves a screenshot and the server log, and says where."""

    def __init__(self, page: LabPage, server: JupyterServer, directory: Path) -> None:
        self.page, self.server, self.dir = page, server, directory
        self.count = 0

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.count += 1
        started = time.monotonic()
        try:
            yield
            print(f"step {self.count} ({name}): {time.monotonic() - started:.1f} s")  # shown on failure
        except Exception as e:
            shot = self.dir / f"{self.count:02d}-{re.sub('[^A-Za-z0-9]+', '-', name).strip('-')}.png"
            try:
                self.page.screenshot(shot)
            except Exception as shot_error:  # noqa: BLE001 - the step's failure matters more
                shot = Path(f"(no screenshot: {shot_error})")
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.server.log_path, self.dir / "jupyterlab.log")
            msg = (f"step {self.count} ({name}) failed: {e}\n"
                   f"screenshot: {shot}\nserver log: {self.dir / 'jupyterlab.log'}")
            raise AssertionError(msg) from e


@pytest.mark.both_transports
@pytest.mark.timeout(240)
def test_jupyterlab_runs_interrupts_and_restarts_an_ssh_kernel(lab, ssh_host, ssh_kernelspec, artifacts_dir):
    server, page = lab
    step = Steps(page, server, artifacts_dir)
    with step("open JupyterLab"):
        page.open(server.url, server.token)

    with step("new notebook, SSH kernel from the picker"):
        page.menu("File", "New", "Notebook")
        page.pick_kernel(ssh_kernelspec.display_name)
        page.wait("the kernel name in the toolbar",
                  lambda: page.kernel_name() == ssh_kernelspec.display_name, 30)
        # As a user waits for "Idle": a Shift+Enter while the page has not connected to the
        # kernel yet is dropped by JupyterLab (the cell keeps its "[ ]" prompt), seen once in CI.
        page.wait("the kernel to be idle", lambda: page.kernel_status() == "idle", 60)

    with step("code runs on the remote host"):
        out = page.wait_output(page.run_cell(WHERE), timeout=90)
        hostname, pid = out.split()
        assert hostname == ssh_host.hostname != socket.gethostname(), out

    with step("interrupt from the toolbar"):
        assert page.wait_output(page.run_cell("x = 42; print('x =', x)")) == "x = 42"
        cell = page.run_cell("import time; print('sleeping', flush=True); time.sleep(60)")
        page.wait("the cell to be in time.sleep", lambda: page.output(cell) == "sleeping", 60)
        started = time.monotonic()
        page.toolbar("notebook:interrupt-kernel")
        out = page.wait_output(cell, timeout=45)
        assert "KeyboardInterrupt" in out, out
        assert time.monotonic() - started < 30, "the interrupt took longer than 30 s"
        assert page.wait_output(page.run_cell("print('x =', x)")) == "x = 42"  # state kept

    with step("restart from the toolbar"):
        page.toolbar("notebook:restart-kernel")
        page.accept_dialog("Restart Kernel?")
        with contextlib.suppress(AssertionError):  # the restart may be over before we look
            page.wait("the kernel to leave idle", lambda: page.kernel_status() != "idle", 5)
        page.wait("the kernel to be idle again", lambda: page.kernel_status() == "idle", 90)
        out = page.wait_output(page.run_cell(f"print('x' in globals()); {WHERE}"), timeout=90)
        assert out.split() == ["False", ssh_host.hostname, out.split()[-1]], out
        assert out.split()[-1] != pid, f"the same remote kernel (pid {pid}) answered after the restart"

    with step("shut the kernel down"):
        status, sessions = server.request("GET", "/api/sessions")
        assert status == 200 and len(sessions) == 1, sessions
        assert sessions[0]["kernel"]["name"] == ssh_kernelspec.name
        status, _ = server.request("DELETE", f"/api/sessions/{sessions[0]['id']}")
        assert status == 204
        left = wait_remote_clean(ssh_host)
        assert not left, f"left on the remote after the session was deleted: {left}"


#: One line of code (what run_cell types): 40 numbered lines, one every 0.8 s (32 s: it ends after the cut).
PRINTING = "for n in range(40): print('line %d' % n, flush=True); __import__('time').sleep(0.8)"


@pytest.mark.both_transports
@pytest.mark.timeout(240)
def test_jupyterlab_cell_printing_through_a_cut_ends_with_all_its_lines(lab, ssh_host, ssh_kernelspec,
                                                                       artifacts_dir):
    """Issue 13: the link to the remote is cut for 20 s while a cell prints; once it is back the
    cell shows all 40 lines, in order, once each, and an execution count, not ``[*]``."""
    server, page = lab
    step = Steps(page, server, artifacts_dir)
    with step("open JupyterLab, new notebook on the SSH kernel"):
        page.open(server.url, server.token)
        page.menu("File", "New", "Notebook")
        page.pick_kernel(ssh_kernelspec.display_name)
        page.wait("the kernel to be idle", lambda: page.kernel_status() == "idle", 90)
        assert page.wait_output(page.run_cell("x = 42; print('x =', x)"), timeout=90) == "x = 42"

    with step("a cell printing through a 20 s cut"):
        cell = page.run_cell(PRINTING)
        page.wait("the first lines", lambda: "line 4" in page.output(cell), 60)
        with cut(ssh_host):
            time.sleep(20)
            shown = page.output(cell).split("\n")
            assert len(shown) < 40, "all lines shown during the cut: the link was not cut?"
        prompt, _ = page.cell_state(cell)
        assert prompt == "[*]:", f"the cell does not look running right after the cut: {prompt!r}"
        out = page.wait_output(cell, timeout=90)
        lines = out.split("\n")
        assert lines == [f"line {n}" for n in range(40)], f"{len(lines)} lines shown: {lines}"
        assert re.fullmatch(r"\[\d+\]:", page.prompt(cell)), page.prompt(cell)
        page.wait("the kernel to be idle", lambda: page.kernel_status() == "idle", 30)

    with step("the same kernel, with its state"):
        assert page.wait_output(page.run_cell("print('x =', x)"), timeout=60) == "x = 42"
