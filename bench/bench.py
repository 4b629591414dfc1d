"""Benchmark: an SSH kernel against a direct local kernel, through jupyter_client.

    .venv/bin/python bench/bench.py                 # builds a throwaway netns SSH host (root)
    .venv/bin/python bench/bench.py --host btest --python /opt/env [--ssh-config FILE]

Prints one table: cold start (KernelManager.start_kernel until the first kernel_info reply),
execute round trip p50/p99, interrupt latency (SIGINT until the KeyboardInterrupt reply),
restart, shutdown and the proxy's resident memory, each for the SSH kernel and for a local
ipykernel as the reference. It is a tool to run by hand, not a test.
"""
from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Dict, List

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

REPO = Path(__file__).resolve().parents[1]


def timed(func: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    func()
    return time.perf_counter() - t0


def wait_reply(kc, msg_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg["content"]


def wait_busy(kc, msg_id: str) -> None:
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=30)
        except queue.Empty:
            raise RuntimeError("kernel never went busy") from None
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "busy"):
            return


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(ksm: KernelSpecManager, name: str, runs: int, round_trips: int) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {k: [] for k in ("start", "rt", "interrupt", "restart", "shutdown", "rss")}
    for _ in range(runs):
        km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
        kc = None

        def start() -> None:
            nonlocal kc
            km.start_kernel(stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)

        out["start"].append(timed(start))
        kc.execute_interactive("import time", timeout=30)
        for _ in range(round_trips):
            out["rt"].append(timed(lambda: kc.execute_interactive("pass", timeout=30)))
        msg_id = kc.execute("time.sleep(30)")
        wait_busy(kc, msg_id)
        time.sleep(0.3)
        t0 = time.perf_counter()
        km.interrupt_kernel()
        reply = wait_reply(kc, msg_id)
        out["interrupt"].append(time.perf_counter() - t0)
        assert reply.get("ename") == "KeyboardInterrupt", reply
        out["rss"].append(rss_mb(km.provisioner.process.pid))

        def restart() -> None:
            km.restart_kernel()
            kc.wait_for_ready(timeout=60)

        out["restart"].append(timed(restart))
        kc.stop_channels()
        out["shutdown"].append(timed(km.shutdown_kernel))
    return out


def pct(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def report(results: Dict[str, Dict[str, List[float]]]) -> str:
    rows = [
        ("cold start (s)", lambda r: statistics.median(r["start"])),
        ("execute round trip p50 (ms)", lambda r: 1000 * pct(r["rt"], 0.5)),
        ("execute round trip p99 (ms)", lambda r: 1000 * pct(r["rt"], 0.99)),
        ("interrupt (ms)", lambda r: 1000 * statistics.median(r["interrupt"])),
        ("restart (s)", lambda r: statistics.median(r["restart"])),
        ("shutdown (s)", lambda r: statistics.median(r["shutdown"])),
        ("kernel/proxy process RSS (MB)", lambda r: statistics.median(r["rss"])),
    ]
    names = list(results)
    lines = [f"{'':32}" + "".join(f"{n:>14}" for n in names)]
    for label, func in rows:
        lines.append(f"{label:32}" + "".join(f"{func(results[n]):14.3f}" for n in names))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="existing SSH host (default: build a netns test host)")
    parser.add_argument("--python", help="remote python or env prefix")
    parser.add_argument("--ssh-config")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args()

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sik-bench-")))
        os.environ["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
        host, python, ssh_config = args.host, args.python, args.ssh_config
        if not host:
            sys.path.insert(0, str(REPO / "tests"))
            from nshosts import NetnsHostFactory

            factory = stack.enter_context(NetnsHostFactory())
            test_host = factory.create_host("btest")
            host, python, ssh_config = test_host.alias, test_host.env_prefix, str(test_host.ssh_config)
        prefix = tmp / "prefix"
        cmd = [sys.executable, "-m", "ssh_ipykernel.manage", "--host", host, "--name", "bench_ssh",
               "--prefix", str(prefix)]
        cmd += ["--python", python] if python else []
        cmd += ["--ssh-config", ssh_config] if ssh_config else []
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        kernels = prefix / "share" / "jupyter" / "kernels"
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "local"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ksm = KernelSpecManager(kernel_dirs=[str(kernels)])
        results = {
            "local": measure(ksm, "local", args.runs, args.round_trips),
            "ssh": measure(ksm, "bench_ssh", args.runs, args.round_trips),
        }
        print(f"{args.runs} runs, {args.round_trips} round trips each; host {host}")
        print(report(results))


if __name__ == "__main__":
    main()
