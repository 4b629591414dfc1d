"""The measurements, each through jupyter_client as Jupyter drives a kernel: one kernelspec at a time.

``single_kernel`` runs one kernel through its life (cold start, a second start while it runs,
round trips, a 20 MB stream, an interrupt, memory, restart, shutdown); ``many_kernels`` starts
N kernels at once. Both work the same for a local ipykernel and for an SSH kernel, which is
what makes the local one a reference.
"""
from __future__ import annotations

import asyncio
import os
import queue
import sys
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import zmq
from jupyter_client import AsyncKernelManager, KernelManager
from jupyter_client.kernelspec import KernelSpecManager

Results = Dict[str, List[float]]

#: Processes of the benchmark's own latency relay are not the proxy's cost.
RELAY_MARK = b"delay_relay.py"
#: This bench's relay (not another checkout's).
OWN_RELAY = str(Path(__file__).resolve().parent / "delay_relay.py").encode()


#: A client's send to a kernel whose proxy died blocks for ever (a ZMQ DEALER with no peer
#: left); with this it raises zmq.Again instead, so one dead kernel does not hang the run.
SEND_TIMEOUT_MS = 10_000


def start_channels(kc) -> None:  # noqa: ANN001
    kc.start_channels()
    for channel in (kc.shell_channel, kc.control_channel, kc.stdin_channel):
        channel.socket.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)


class BenchError(RuntimeError):
    """A kernel did not do what a measurement needs; the message carries its log."""


def read_log(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of one process, in MB (2**20 bytes)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> List[int]:
    """All processes below ``pid`` (children, their children, ...)."""
    children: Dict[int, List[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` plus its descendants (ssh master and sessions), without the bench's relays."""
    total = rss_mb(pid)
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if RELAY_MARK in f.read():
                    continue
        except OSError:
            continue
        total += rss_mb(child)
    return total


def cpu_seconds(pid: int) -> Optional[float]:
    """CPU time of one process (all its threads), in seconds; None once it is gone. From each
    thread's schedstat (nanoseconds): /proc/<pid>/stat counts 10 ms ticks, as much as a relay
    spends on the whole stream."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def cpu_roles(kernel_pid: int, *, ssh: bool, remote_pids: Optional[Callable[[], List[int]]] = None) -> Dict[int, str]:
    """The processes that carry a kernel's messages, by role: this process (jupyter_client's
    client), the proxy and its ssh clients, the bench's delay relay, the host's shared ssh
    master (found by the bench's runtime directory in its control path) and, where the host's
    processes can be listed (a netns host), sshd, the agent, the keeper and the kernel."""
    roles = {os.getpid(): "client", kernel_pid: "proxy" if ssh else "kernel"}
    for pid in descendants(kernel_pid):
        cmdline = _cmdline(pid)
        if RELAY_MARK in cmdline:
            roles[pid] = "delay relay"
        elif cmdline.split(b"\0", 1)[0].endswith(b"ssh"):
            roles[pid] = "ssh client"
        else:
            roles[pid] = "proxy child"
    # Only for an SSH kernel: the masters of earlier kinds linger (ControlPersist), idle.
    runtime = os.environ.get("JUPYTER_RUNTIME_DIR", "").encode() if ssh else b""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        cmdline = _cmdline(int(entry))
        if runtime and runtime in cmdline and b"ControlMaster=yes" in cmdline:
            roles[int(entry)] = "ssh master"
        elif runtime and OWN_RELAY in cmdline and int(entry) not in roles:
            roles[int(entry)] = "delay relay"  # the master's ProxyCommand (its parent, ssh, has exited)
    if ssh and remote_pids is not None:
        remote = {pid: _cmdline(pid) for pid in remote_pids()}
        sshd = {pid for pid, cmdline in remote.items()
                if b"sshd" in cmdline.split(b"\0", 1)[0] or cmdline.startswith(b"sshd")}
        for pid, cmdline in remote.items():
            if b"ipykernel_launcher" in cmdline:
                roles[pid] = "remote kernel"
            elif pid in sshd:
                roles[pid] = "sshd"
            elif cmdline.startswith(b"ssh_ipykernel-warm-pool"):
                roles[pid] = "warm pool"  # the parent of a warm kernel
            elif b"ssh_ipykernel-agent" in cmdline:
                # The keeper was forked away from its session (setsid); the agent sessions
                # (start, attach) are sshd's children.
                roles[pid] = "agent" if _ppid(pid) in sshd else "keeper"
            elif b"python" in cmdline:
                roles[pid] = "agent"
            else:
                roles[pid] = "remote other"
    return roles


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


class CPUMeter:
    """CPU seconds each role spends between ``__enter__`` and ``__exit__`` (processes that end
    in between are not counted: none do during a cell)."""

    def __init__(self, roles: Dict[int, str]) -> None:
        self.roles = roles
        self.spent: Dict[str, float] = {}

    def __enter__(self) -> "CPUMeter":
        self._before = {pid: cpu_seconds(pid) for pid in self.roles}
        return self

    def __exit__(self, *exc: object) -> None:
        for pid, role in self.roles.items():
            before, after = self._before.get(pid), cpu_seconds(pid)
            if before is not None and after is not None:
                self.spent[role] = self.spent.get(role, 0.0) + after - before


def control_path(kernel_pid: int) -> Optional[str]:
    """The control socket of the shared connection a proxy uses (from its ssh clients' command
    lines), or None (paramiko, or no ssh client running)."""
    for pid in descendants(kernel_pid):
        for arg in _cmdline(pid).split(b"\0"):
            if arg.startswith(b"ControlPath="):
                return arg[len(b"ControlPath="):].decode()
    return None


def link_rtt(samples: int = 21, path: Optional[str] = None) -> Optional[float]:
    """Median round trip (s) of a request through the host's shared SSH connection (the master
    asks the server for a forward it refuses: one round trip), or None without one. ``path``:
    its control socket; else the only one there is (earlier kinds' masters linger a while)."""
    from ssh_ipykernel.transport.mux import MuxClient, MuxError
    from ssh_ipykernel.transport.openssh import control_dir

    if path is None:
        directory = control_dir()
        sockets = [n for n in os.listdir(directory) if n.startswith("cm-") and "." not in n]
        if len(sockets) != 1:
            return None
        path = os.path.join(directory, sockets[0])
    try:
        client = MuxClient(path, timeout=5)
    except MuxError:
        return None
    times = []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            if client.probe(5.0):
                times.append(time.perf_counter() - t0)
    finally:
        client.close()
    return statistics.median(times) if times else None


class Kernel:
    """A KernelManager and its client, the kernel's (or proxy's) output kept in a log file."""

    def __init__(self, ksm: KernelSpecManager, name: str, log_path: Path) -> None:
        self.km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
        self.log_path = log_path
        self.kc = None
        self._log = None

    def start(self, timeout: float = 120) -> float:
        """Seconds from start_kernel until the first kernel_info reply."""
        t0 = time.perf_counter()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - KernelManager reuses it on restart
        self.km.start_kernel(stdout=self._log, stderr=self._log)
        self.kc = self.km.client()
        start_channels(self.kc)
        self._ready(timeout)
        return time.perf_counter() - t0

    def _drain(self) -> None:
        """Drop queued replies and iopub messages. wait_for_ready sends a kernel_info request
        every second and takes the first reply: the others arrive later and stay queued, and the
        next wait_for_ready (after a restart) would take one of those for the new kernel's."""
        for channel in (self.kc.shell_channel, self.kc.iopub_channel):
            while True:
                try:
                    channel.get_msg(timeout=0)
                except queue.Empty:
                    break

    def _ready(self, timeout: float) -> None:
        self._drain()
        try:
            self.kc.wait_for_ready(timeout=timeout)
        except (RuntimeError, zmq.Again) as e:
            raise BenchError(f"{e}\n--- log ---\n{read_log(self.log_path)}") from e

    def execute(self, code: str, timeout: float = 60) -> dict:
        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            raise BenchError(f"{code!r} failed: {reply['content']}")
        return reply

    def round_trips(self, count: int) -> List[float]:
        """Seconds per ``pass`` cell, execute_request until reply and idle (what a user waits for)."""
        self.execute("import sys, time")
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            self.kc.execute_interactive("pass", timeout=30, output_hook=lambda msg: None)
            out.append(time.perf_counter() - t0)
        return out

    def stream(self, total: int, chunk: int = 100_000) -> float:
        """MB/s of a cell writing ``total`` bytes to stdout in ``chunk``-sized writes, from
        execute_request until the idle status with every stream byte received on iopub."""
        count = total // chunk
        code = (f"import sys\n_c = 'x' * {chunk - 1} + '\\n'\nfor _ in range({count}):\n    sys.stdout.write(_c)\n"
                "sys.stdout.flush()")
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        received = 0
        while True:
            msg = self._iopub(60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                received += len(msg["content"]["text"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        elapsed = time.perf_counter() - t0
        if received != count * chunk:
            raise BenchError(f"stream: received {received} of {count * chunk} bytes")
        return received / 1e6 / elapsed

    def interrupt(self) -> float:
        """Seconds from interrupt_kernel() until the interrupted cell's reply. The cell catches
        KeyboardInterrupt, so this is the signal's way there and the reply's way back, not
        IPython formatting a traceback."""
        msg_id = self.kc.execute("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass")
        while True:
            msg = self._iopub(30)
            if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "busy"):
                break
        time.sleep(0.3)  # in time.sleep, not still parsing the cell
        t0 = time.perf_counter()
        self.km.interrupt_kernel()
        while True:
            try:
                msg = self.kc.get_shell_msg(timeout=30)
            except queue.Empty:
                raise BenchError(f"no reply to the interrupted cell\n{read_log(self.log_path)}") from None
            if msg["parent_header"].get("msg_id") == msg_id:
                elapsed = time.perf_counter() - t0
                break
        if msg["content"]["status"] != "ok":
            raise BenchError(f"interrupted cell: {msg['content']}")
        return elapsed

    def _iopub(self, timeout: float) -> dict:
        try:
            return self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"no iopub message for {timeout} s\n{read_log(self.log_path)}") from None

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def restart(self, timeout: float = 120) -> float:
        t0 = time.perf_counter()
        self.km.restart_kernel()
        self._ready(timeout)
        return time.perf_counter() - t0

    def shutdown(self) -> float:
        if self.kc is not None:
            self.kc.stop_channels()
        t0 = time.perf_counter()
        if self.km.has_kernel:
            self.km.shutdown_kernel()
        elapsed = time.perf_counter() - t0
        if self._log:
            self._log.close()
        return elapsed

    def kill(self) -> None:
        """After a failure: end it without measuring anything."""
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
        finally:
            if self._log:
                self._log.close()


def single_kernel(ksm: KernelSpecManager, name: str, logs: Path, only: Iterable[str], *, ssh: bool = True,
                  round_trips: int = 200, stream_bytes: int = 20_000_000,
                  remote_pids: Optional[Callable[[], List[int]]] = None) -> Results:
    """One kernel's life; returns {metric: [value]} for the metrics in ``only``, and with the
    stream the CPU seconds each process role spent on it ("cpu:<role>"; the remote roles with
    ``remote_pids``, which lists the host's processes)."""
    only = set(only)
    out: Results = {}
    kernel = Kernel(ksm, name, logs / f"{name}-{time.time_ns()}.log")
    second: Optional[Kernel] = None
    try:
        if "start" in only:
            # Cold: no shared connection to the host left over from an earlier kernel.
            from ssh_ipykernel.transport.openssh import end_shared_connections

            end_shared_connections()
            time.sleep(0.2)
        out["start"] = [kernel.start()]
        if "rt" in only:
            out["rt"] = kernel.round_trips(round_trips)
            rtt = link_rtt(path=control_path(kernel.pid)) if ssh else None
            if rtt is not None:
                out["link_rtt"] = [rtt]
        if "stream" in only:
            with CPUMeter(cpu_roles(kernel.pid, ssh=ssh, remote_pids=remote_pids)) as meter:
                out["stream"] = [kernel.stream(stream_bytes)]
            out.update({f"cpu:{role}": [seconds] for role, seconds in meter.spent.items()})
        if "interrupt" in only:
            out["interrupt"] = [kernel.interrupt()]
        if "rss" in only:
            out["rss"] = [rss_mb(kernel.pid)]
            out["rss_tree"] = [tree_rss_mb(kernel.pid)]
        if "warm_start" in only:
            # A second kernel on the same host while the first runs: what a shared connection saves.
            second = Kernel(ksm, name, logs / f"{name}-{time.time_ns()}-2.log")
            out["warm_start"] = [second.start()]
            second.shutdown()
            second = None
        if "restart" in only:
            out["restart"] = [kernel.restart()]
        out["shutdown"] = [kernel.shutdown()]
        kernel = None
    finally:
        for k in (second, kernel):
            if k is not None:
                k.kill()
    return {k: v for k, v in out.items()
            if k in only or k == "rss_tree" and "rss" in only or k == "link_rtt" or k.startswith("cpu:")}


async def _many(ksm: KernelSpecManager, name: str, count: int, logs: Path, timeout: float,
                connections: Optional[Callable[[], int]]) -> Results:
    kms = [AsyncKernelManager(kernel_name=name, kernel_spec_manager=ksm) for _ in range(count)]
    files = [open(logs / f"{name}-many-{time.time_ns()}-{i}.log", "ab") for i in range(count)]  # noqa: SIM115
    clients = []

    async def one(km: AsyncKernelManager, log) -> None:  # noqa: ANN001
        await km.start_kernel(stdout=log, stderr=log)
        kc = km.client()
        clients.append(kc)
        start_channels(kc)
        await kc.wait_for_ready(timeout=timeout)

    try:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(km, f) for km, f in zip(kms, files)), return_exceptions=True)
        elapsed = time.perf_counter() - t0
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        if len(failed) == count:
            raise BenchError(f"none of {count} kernels started; the first: {results[0]}\n"
                             f"{read_log(Path(files[0].name))}")
        for i in failed:  # a result in itself (Jupyter's restarter would retry): counted, shown
            print(f"warning: kernel {i + 1} of {count} failed: {results[i]}\n"
                  f"{read_log(Path(files[i].name), 8)}", file=sys.stderr)
        out: Results = {"many": [elapsed], "many_failed": [float(len(failed))]}
        if connections is not None:
            out["connections"] = [float(connections())]
        return out
    finally:
        for kc in clients:
            kc.stop_channels()
        await asyncio.gather(*(_shutdown(km) for km in kms), return_exceptions=True)
        for f in files:
            f.close()


async def _shutdown(km: AsyncKernelManager) -> None:
    if not km.has_kernel:
        return
    # A dead kernel gets no shutdown_request: jupyter_client's send to its control port would
    # block for ever when nothing (or something else) listens there.
    alive = await km.is_alive()
    try:
        await asyncio.wait_for(km.shutdown_kernel(now=not alive), 30)
    except asyncio.TimeoutError:
        await km.shutdown_kernel(now=True)


def many_kernels(ksm: KernelSpecManager, name: str, count: int, logs: Path, *, timeout: float = 300,
                 connections: Optional[Callable[[], int]] = None) -> Results:
    """Seconds until ``count`` kernels started at once all answered kernel_info (or failed: the
    failures are counted); with ``connections``, also how many SSH connections the host had with
    all of them running. Cold: they race to make the host's shared connection."""
    from ssh_ipykernel.transport.openssh import end_shared_connections

    end_shared_connections()
    time.sleep(0.2)
    return asyncio.run(_many(ksm, name, count, logs, timeout, connections))
