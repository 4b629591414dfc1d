"""Helpers for driving SSH kernels the way users do: manage -> kernelspec -> KernelManager."""
from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from jupyter_client import KernelManager
from jupyter_client.connect import write_connection_file
from jupyter_client.kernelspec import KernelSpecManager

from testutil import free_port, free_ports, read_log, wait_for, wait_until  # noqa: F401 - re-exported


AGENT_PATTERN = "ssh_ipykernel-agent"
# Any kernel started with its connection file (ipykernel, a remote kernelspec, --kernel-cmd).
KERNEL_PATTERN = r" -f \S*/kernel-ssh-"


#: The --transport of the kernels a test registers or starts; set per test by the ``transport``
#: fixture (tests/integration/conftest.py), None: the proxy's default.
TRANSPORT: Optional[str] = None


def transport_args() -> List[str]:
    """``--transport`` for the current test's transport (see TRANSPORT), for manage and the proxy."""
    return ["--transport", TRANSPORT] if TRANSPORT else []


def manage(host, prefix: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m ssh_ipykernel.manage`` as a user would, into a private prefix."""
    extra = transport_args() if args[:1] == ("--host",) else []  # `add`, the default command
    argv = [sys.executable, "-m", "ssh_ipykernel.manage", "--ssh-config", str(host.ssh_config),
            "--prefix", str(prefix), *extra, *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def spec_manager(prefix: Path) -> KernelSpecManager:
    return KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])


class Kernel:
    """A KernelManager + client on an SSH kernelspec, with the proxy's stderr kept in a file."""

    def __init__(self, prefix: Path, name: str, log_path: Path) -> None:
        self.log_path = log_path
        self.km = KernelManager(kernel_name=name, kernel_spec_manager=spec_manager(prefix))
        self.kc = None

    def start(self, timeout: float = 60) -> float:
        t0 = time.monotonic()
        self.launch()
        self.wait_ready(timeout)
        return time.monotonic() - t0

    def launch(self) -> None:
        """Start the proxy (KernelManager.start_kernel) without waiting for the kernel."""
        # Kept open: KernelManager reuses these for every restart.
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115
        self.km.start_kernel(stdout=self._log_file, stderr=self._log_file)

    def wait_ready(self, timeout: float = 60) -> None:
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=timeout)
        except RuntimeError as e:
            raise AssertionError(f"{e}\n--- proxy log ---\n{self.log()}") from e

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def proxy(self) -> subprocess.Popen:
        return self.km.provisioner.process  # type: ignore[union-attr]

    def execute(self, code: str, timeout: float = 60) -> Tuple[Dict[str, Any], str, List[Dict[str, Any]]]:
        """Run code; return (reply content, stdout text, other iopub outputs)."""
        stdout: List[str] = []
        outputs: List[Dict[str, Any]] = []

        def on_output(msg: Dict[str, Any]) -> None:
            kind = msg["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])
            elif kind in ("execute_result", "display_data", "error"):
                outputs.append(msg)

        for _ in range(3):
            reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=on_output)
            # ipykernel aborts what reaches it while it still aborts its queue after an error
            # (stop_on_error, e.g. right after an interrupted cell): a loaded machine can land
            # the next request in that window. Sent again, as a person would run the cell again.
            if reply["content"]["status"] != "aborted":
                break
            time.sleep(0.2)
        return reply["content"], "".join(stdout), outputs

    def value(self, expression: str, timeout: float = 60) -> str:
        """The printed value of an expression on the remote."""
        content, out, _ = self.execute(f"print({expression})", timeout)
        assert content["status"] == "ok", content
        return out.strip()

    def remote_pid(self, timeout: float = 30) -> int:
        """The kernel's pid on the remote, asked through the kernel itself."""
        return int(self.value("__import__('os').getpid()", timeout=timeout))

    def shutdown_and_exit_code(self, timeout: float = 20) -> int:
        """Shut down through KernelManager as Jupyter does and return the proxy's exit code.

        KernelManager drops its process handle during shutdown, so it is taken first."""
        proc = self.proxy
        self.shutdown()
        return proc.wait(timeout)

    def wait_reply(self, msg_id: str, timeout: float) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no reply within {timeout} s\n{self.log()}") from None
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]

    def interrupt_cell(self, msg_id: str, timeout: float = 15) -> float:
        """Interrupt the kernel as Jupyter does, while ``msg_id`` runs; assert that cell ended in
        KeyboardInterrupt within ``timeout``. Seconds from the interrupt to its reply."""
        t0 = time.monotonic()
        self.km.interrupt_kernel()
        reply = self.wait_reply(msg_id, timeout=timeout)
        assert (reply["status"], reply.get("ename")) == ("error", "KeyboardInterrupt"), f"{reply}\n{self.log()}"
        return time.monotonic() - t0

    def wait_busy(self, msg_id: str, timeout: float = 30) -> None:
        """Wait until the kernel reports it started executing ``msg_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "busy"):
                return
        raise AssertionError("the kernel never went busy")

    def shutdown(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel()
        if getattr(self, "_log_file", None):
            self._log_file.close()


def iopub_back_after(kernel: "Kernel", since: float, timeout: float = 30) -> float:
    """Seconds from ``since`` until the kernel's iopub messages reach the client again (the
    status messages of kernel_info requests): the shell channel can answer first, while the
    SUB socket has not reconnected and subscribed yet, and output published before that is lost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = kernel.kc.kernel_info()
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            try:
                msg = kernel.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return time.monotonic() - since
    raise AssertionError(f"no iopub message within {timeout} s\n{kernel.log()}")


def remote_leftovers(host, kernel_pid: Optional[int] = None) -> Dict[str, Any]:
    """What an SSH kernel could leave on the remote: agent/kernel processes, key files."""
    found: Dict[str, Any] = {}
    agents = host.remote_pids(AGENT_PATTERN)
    kernels = host.remote_pids(KERNEL_PATTERN)
    if agents:
        found["agents"] = agents
    if kernels:
        found["kernels"] = kernels
    if kernel_pid is not None and host.run(f"kill -0 {kernel_pid}").returncode == 0:
        found["kernel_pid"] = kernel_pid
    files = host.run(f"ls -A {host.runtime_dir} 2>/dev/null | grep '^kernel-ssh-' || true").stdout.split()
    if files:
        found["files"] = files
    return found


def wait_remote_clean(host, kernel_pid: Optional[int] = None, timeout: float = 20) -> Dict[str, Any]:
    """Poll until nothing is left on the remote; return what is still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = remote_leftovers(host, kernel_pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.3)


def _control_path_users(runtime_dir: str) -> List[str]:
    out = subprocess.run(["pgrep", "-af", f"ControlPath={runtime_dir}"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def local_ssh_children(runtime_dir: str) -> List[str]:
    """Processes of proxies (ssh sessions, forward guards) using a control socket under this
    test's runtime dir. The shared master is not one of them: it outlives the proxies on
    purpose (ControlPersist) and ends by itself; see ssh_masters()."""
    return [line for line in _control_path_users(runtime_dir) if " -M " not in line]


def listeners_of(ports: List[int], runtime_dir: str) -> List[str]:
    """Listening sockets on ``ports`` held by this test's proxies (a command line naming its
    runtime dir, where its connection files are) or by this process. Other tests running
    beside it may be given the same ports afterwards; their listeners are not leaks."""
    import re

    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    leaks = []
    for line in listening.splitlines():
        found = re.search(r"127\.0\.0\.1:(\d+)\b", line)
        if not found or int(found.group(1)) not in ports:
            continue
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if pid == os.getpid() or runtime_dir in cmdline:
                leaks.append(f"{line.strip()} [{cmdline}]")
    return leaks


def ssh_masters(runtime_dir: str) -> List[int]:
    """Pids of the shared ssh masters (ControlMaster) under this test's runtime dir."""
    return [int(line.split()[0]) for line in _control_path_users(runtime_dir) if " -M " in line]


def end_masters(runtime_dir: str) -> None:
    """End the shared masters under ``runtime_dir`` now (as ``ssh -O exit`` would)."""
    from ssh_ipykernel.transport.openssh import end_shared_connections

    end_shared_connections(os.path.join(runtime_dir, "ssh_ipykernel"))
    deadline = time.monotonic() + 5
    while ssh_masters(runtime_dir) and time.monotonic() < deadline:
        time.sleep(0.05)


def accepted_logins(host) -> int:
    """How many SSH logins the host's sshd has accepted so far (one per connection)."""
    return host.sshd_log().count("Accepted publickey")


def remote_connection_info(host) -> Dict[str, Any]:
    """The single remote connection file of the running kernel, read on the remote."""
    r = host.run(f"cat {host.runtime_dir}/kernel-ssh-*.json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def all_cmdlines() -> bytes:
    data = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    data.append(f.read())
            except OSError:
                pass
    return b"\n".join(data)


PASSPHRASE = "sekret"


def passphrase_copy(identity: Path, key: Path) -> Path:
    """A copy of the private key ``identity`` at ``key``, with PASSPHRASE (no .pub beside it)."""
    key.write_bytes(identity.read_bytes())
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", PASSPHRASE, "-f", str(key)], check=True,
                   capture_output=True, timeout=30)
    return key


@contextlib.contextmanager
def ssh_agent(sock: Path, *keys: Path) -> Iterator[str]:
    """An ssh-agent listening on ``sock`` (keep it short: 108 bytes at most) with ``keys`` loaded
    in that order (PASSPHRASE given through SSH_ASKPASS); yields the socket path, then ends it."""
    askpass = sock.parent / "askpass"
    askpass.write_text(f"#!/bin/sh\necho {PASSPHRASE}\n")
    askpass.chmod(0o700)
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # The socket's name appears when the agent binds it, a moment before it listens: wait
        # until it accepts a connection (ssh-add before that fails with exit 2, seen in CI).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(sock))
                    break
                except OSError:
                    time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock), "SSH_ASKPASS": str(askpass),
               "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
        for key in keys:
            subprocess.run(["ssh-add", str(key)], check=True, capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL, env=env)
        yield str(sock)
    finally:
        agent.terminate()
        agent.wait(timeout=10)


# ------------------------------------------------------------------ the proxy by hand
def connection_file(directory: Path, name: str = "byhand") -> Path:
    """A connection file as Jupyter writes it (``kernel-<name>.json``), on free local ports, with a
    session key of its own."""
    import secrets

    shell, iopub, stdin, hb, control = free_ports(5)  # testutil: outside the automatic port range
    fname, _ = write_connection_file(str(directory / f"kernel-{name}.json"), ip="127.0.0.1",
                                     key=secrets.token_hex(16).encode(), shell_port=shell, iopub_port=iopub,
                                     stdin_port=stdin, hb_port=hb, control_port=control)
    return Path(fname)


#: ``python=`` default of start_proxy: the host's remote env (None: no --python, the remote PATH's).
ENV = object()


def start_proxy(host, conn: Path, log: Path, *args: str, python: Any = ENV) -> subprocess.Popen:
    """``python -m ssh_ipykernel --host ALIAS ... -f CONN`` as a kernelspec would run it, with
    this test's --transport; stdout and stderr appended to ``log``."""
    py = host.env_prefix if python is ENV else python
    argv = [sys.executable, "-m", "ssh_ipykernel", "--host", host.alias, "--ssh-config", str(host.ssh_config),
            *(["--python", py] if py else []), *transport_args(), *args, "-f", str(conn)]
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def stop_proxy(proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    """SIGTERM (Jupyter's shutdown of a kernel it cannot reach) and insist on exit code 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout) == 0, read_log(log)


# ------------------------------------------------------------------ network faults
#: The two ways a network goes away (docs: /work/shared/ENVIRONMENT.md): "blackhole" - packets
#: vanish silently (a dead VPN, a remote outage: connects time out); "down" - the link and its
#: route are gone (a dropped Wi-Fi, an unplugged cable: connects fail at once).
CUT_KINDS = ("blackhole", "down")


@contextlib.contextmanager
def cut(host, kind: str = "blackhole") -> Iterator[float]:
    """The host is cut off inside the block and always restored after it, even when the block
    fails (a host left down would fail every later test); yields the monotonic time of the cut."""
    try:
        host.cut(kind)
    except NotImplementedError:
        pytest.skip(f"this test host cannot make a {kind!r} cut")
    try:
        yield time.monotonic()
    finally:
        host.restore(kind)


# ------------------------------------------------------------------ one kernel through faults
@contextlib.contextmanager
def started_kernel(host, tmp_path: Path, jupyter_env, name: str) -> Iterator["Kernel"]:
    """A kernel of a kernelspec ``name`` for ``host``, started; at the end shut down, with nothing
    left on the remote and no ssh child of ours left locally (the fault tests' fixture)."""
    prefix = tmp_path / "prefix"
    manage(host, prefix, "--host", host.alias, "--python", host.env_prefix, "--name", name)
    k = Kernel(prefix, name, tmp_path / "proxy.log")
    k.start()
    yield k
    k.shutdown()
    assert not wait_remote_clean(host, timeout=15), k.log()
    assert not local_ssh_children(str(jupyter_env.runtime))


def shutdown_all(kernels: List["Kernel"]) -> None:
    """Shut each kernel down, as a fixture's teardown does: a failure to shut one down is not
    this teardown's to report (the test itself says what went wrong)."""
    for k in kernels:
        try:
            k.shutdown()
        except Exception:  # noqa: BLE001 - see above
            pass


@contextlib.contextmanager
def kernel_factory(host, tmp_path: Path, name: str, runtime_dir: Optional[str] = None) -> Iterator[Any]:
    """Make (not yet started) kernels of one kernelspec ``name`` for ``host``: ``make()``; at the
    end all are shut down, with nothing left on the remote (and, given the test's Jupyter
    ``runtime_dir``, no ssh child of ours left locally)."""
    prefix = tmp_path / "prefix"
    manage(host, prefix, "--host", host.alias, "--python", host.env_prefix, "--name", name)
    made: List[Kernel] = []

    def make() -> Kernel:
        k = Kernel(prefix, name, tmp_path / f"proxy-{len(made)}.log")
        made.append(k)
        return k

    yield make
    shutdown_all(made)
    assert not wait_remote_clean(host, timeout=20)
    if runtime_dir is not None:
        assert not local_ssh_children(runtime_dir)


class Watcher:
    """A restarter-like watch on the proxy: it must stay alive through every fault."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.died_at: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            proc = getattr(self.kernel.km.provisioner, "process", None)
            if proc is None:  # shut down: the test failed before stop() and its fixture ended it
                return
            if proc.poll() is not None and self.died_at is None:
                self.died_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        assert self.died_at is None, f"the proxy exited during the fault\n{self.kernel.log()}"


def first_answer_after(kernel: Kernel, since: float, timeout: float = 30) -> float:
    """Poll kernel_info every 0.2 s (requests queue in ZMQ meanwhile); seconds from ``since``."""
    deadline = time.monotonic() + timeout
    pending = set()
    while time.monotonic() < deadline:
        pending.add(kernel.kc.kernel_info())
        try:
            msg = kernel.kc.get_shell_msg(timeout=0.2)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") in pending and msg["msg_type"] == "kernel_info_reply":
            return time.monotonic() - since
    raise AssertionError(f"no kernel_info_reply within {timeout} s\n{kernel.log()}")


# ------------------------------------------------------------------ what a client sees of a cell
#: How the proxy's own messages to the user on iopub begin (e.g. output dropped during an outage).
NOTICE = "[ssh_ipykernel]"


class Cell:
    """One execute request as a client sees it: its stdout lines (numbered ``line <n>`` by the
    tests) with their arrival times, its stderr texts, its execute_reply and its final idle
    status, read from ``kc``'s iopub and shell channels. ``msg_id`` follows a request sent by
    another client on the same kernel (its reply then never comes to this one)."""

    def __init__(self, kc, code: Optional[str] = None, *, msg_id: Optional[str] = None, **kw: Any) -> None:
        self.kc = kc
        self.msg_id = msg_id if msg_id is not None else kc.execute(code, **kw)
        self.lines: List[Tuple[float, str]] = []
        self.stderr: List[str] = []
        self.errors: List[Dict[str, Any]] = []
        self.reply: Optional[Dict[str, Any]] = None
        self.reply_at: Optional[float] = None
        self.busy_at: Optional[float] = None
        self.idle_at: Optional[float] = None
        #: The proxy's own notices on iopub (stderr streams starting "[ssh_ipykernel]"), whatever
        #: their parent.
        self.notices: List[str] = []
        self._partial = ""

    def pump(self, timeout: float = 0.1) -> None:
        """Read what has come on iopub (waiting up to ``timeout``) and on shell (not waiting)."""
        try:
            while True:
                self._iopub(self.kc.get_iopub_msg(timeout=timeout))
                timeout = 0  # then whatever else is queued already
        except queue.Empty:
            pass
        if self.reply is None:
            try:
                while True:
                    msg = self.kc.get_shell_msg(timeout=0)
                    if msg["parent_header"].get("msg_id") == self.msg_id:
                        self.reply, self.reply_at = msg["content"], time.monotonic()
                        break
            except queue.Empty:
                pass

    def _iopub(self, msg: Dict[str, Any]) -> None:
        now, kind, content = time.monotonic(), msg["msg_type"], msg["content"]
        if kind == "stream" and content["text"].startswith(NOTICE):
            self.notices.append(content["text"])
            return
        if msg["parent_header"].get("msg_id") != self.msg_id:
            return
        if kind == "stream" and content["name"] == "stdout":
            text = self._partial + content["text"]
            *complete, self._partial = text.split("\n")
            self.lines += [(now, line) for line in complete]
        elif kind == "stream":
            self.stderr.append(content["text"])
        elif kind == "error":
            self.errors.append(content)
        elif kind == "status" and content["execution_state"] == "busy":
            self.busy_at = now
        elif kind == "status" and content["execution_state"] == "idle":
            self.idle_at = now

    @property
    def done(self) -> bool:
        """Its reply and its final idle status have both arrived (the reply only if ours)."""
        return self.idle_at is not None and self.reply is not None

    def wait(self, condition, timeout: float, what: str, log: str = "") -> float:
        """Pump until ``condition()``; the monotonic time it became true. AssertionError naming
        ``what`` (and the proxy's ``log``, given as a callable or text) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                text = log() if callable(log) else log
                raise AssertionError(f"{what}: not within {timeout} s ({self.summary()})\n{text}")
            self.pump()
        return time.monotonic()

    def numbers(self) -> List[int]:
        """The ``n`` of every ``line <n>`` received, in arrival order (duplicates kept)."""
        return [int(line.split()[1]) for _, line in self.lines if line.startswith("line ")]

    def arrived_after(self, t: float) -> List[int]:
        return [int(line.split()[1]) for at, line in self.lines if at > t and line.startswith("line ")]

    def summary(self) -> str:
        numbers = self.numbers()
        return (f"{len(numbers)} lines {compress(numbers)}, reply "
                f"{(self.reply or {}).get('status')}, idle {'yes' if self.idle_at else 'no'}, "
                f"stderr {self.stderr!r:.300}, notices {self.notices!r:.300}")


def compress(numbers: List[int]) -> str:
    """``[0-9, 12, 15-20]``: a list of line numbers as runs, for assertion messages."""
    runs: List[List[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return "[" + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) + "]"


def printing_cell(lines: int, every: float, size: int = 0) -> str:
    """Code printing ``line <n>`` (padded with ``size`` characters) ``lines`` times, one every
    ``every`` seconds, each flushed at once."""
    pad = f" + ' ' + 'x' * {size}" if size else ""
    return (f"import time\nfor n in range({lines}):\n    print('line %d' % n{pad}, flush=True)\n"
            f"    time.sleep({every})")


def cell_through_cut(cell: Cell, host, *, after_lines: int, seconds: float, kind: str = "blackhole",
                     log="", timeout: float = 60) -> Tuple[float, float]:
    """Follow ``cell``; once ``after_lines`` of its lines have arrived, cut ``host`` off for
    ``seconds``; then follow it until its reply and final idle have come (AssertionError after
    ``timeout`` from the restore). Returns the monotonic times of the cut and of the restore."""
    cell.wait(lambda: len(cell.lines) >= after_lines, 60, f"{after_lines} lines before the cut", log)
    with cut(host, kind) as t_down:
        end = t_down + seconds
        while time.monotonic() < end:
            cell.pump(timeout=min(0.1, max(0.0, end - time.monotonic())))
    t_up = time.monotonic()
    cell.wait(lambda: cell.done, timeout, "the cell's reply and idle after the cut", log)
    return t_down, t_up


def client_of(conn: Path, timeout: float = 60):
    """A BlockingKernelClient on the connection file ``conn`` (a proxy run by hand), ready."""
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=str(conn))
    kc.load_connection_file()
    # No heartbeat channel: without a KernelManager, wait_for_ready() takes a heartbeat not yet
    # answered (the proxy is still starting the kernel) for a dead kernel and gives up at once.
    kc.start_channels(hb=False)
    kc.wait_for_ready(timeout=timeout)
    return kc
