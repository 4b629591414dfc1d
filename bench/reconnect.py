"""Benchmark: how soon the kernel answers again after the network comes back (issue 13).

    .venv/bin/python bench/reconnect.py                       # netns test host (root), both cuts, openssh
    .venv/bin/python bench/reconnect.py --transport openssh,paramiko --repeat 5 --json out.json

A proxy started by hand serves a kernel that runs a cell the whole time (`time.sleep`), so the
shell channel is busy and "the kernel answers" means a `kernel_info_request` on the control
channel. Each round cuts the link (tests/nshosts.py: a blackhole route in the host, or our end
of the veth down with its route), waits until the proxy has noticed (its "reconnecting" line)
and a little longer (past the 3 s in which it asks the old connection for a last answer, so the
way back needs a new one; --after, --spread), restores the link, and sends a control-channel
kernel_info every 20 ms until one is answered: the time from the restore (once its commands
returned) to that answer is the result. The link's own round-trip time (a TCP connect to sshd)
is reported beside it. --show-log runs the proxy with --log-level DEBUG and prints its lines of
each reconnect: the breakdown of where the time goes (the attempt's "connected in / attached in
/ channels in" line). A tool, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from links import BenchHost, base_rtt  # noqa: E402

#: The two kinds of cut of the netns test hosts (tests/nshosts.py: NetnsHost.cut/restore).
KINDS = ("blackhole", "down")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", default="openssh", help="openssh,paramiko (default openssh)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="blackhole,down (default both)")
    parser.add_argument("--repeat", type=int, default=3, help="cuts of each kind per transport (default 3)")
    parser.add_argument("--after", type=float, default=4.0,
                        help="seconds the link stays cut after the proxy noticed, at least (default 4) ...")
    parser.add_argument("--spread", type=float, default=8.0,
                        help="... plus up to this many more, at random (default 8): the link returns in every "
                             "phase of the proxy's waiting (probes, backoffs, a periodic attempt)")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--show-log", action="store_true",
                        help="run the proxy with --log-level DEBUG and print its lines of each reconnect (the "
                             "breakdown; ssh -v then adds a little to the OpenSSH login)")
    return parser.parse_args()


def wait_log(log: Path, pattern: str, since: int, timeout: float) -> int:
    """Until ``pattern`` appears in the log after offset ``since``; the offset after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        m = re.search(pattern, text[since:])
        if m:
            return since + m.end()
        time.sleep(0.05)
    raise RuntimeError(f"{pattern!r} not in the proxy log:\n{log.read_text()[since:]}")


def control_answer(kc, timeout: float = 30.0) -> float:  # noqa: ANN001 - a BlockingKernelClient
    """Send kernel_info on the control channel every 20 ms until one is answered; the time then."""
    import queue

    sent = set()
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_send:
            msg = kc.session.msg("kernel_info_request")
            kc.control_channel.send(msg)
            sent.add(msg["header"]["msg_id"])
            next_send = now + 0.02
        try:
            reply = kc.control_channel.get_msg(timeout=max(0.001, next_send - time.monotonic()))
        except queue.Empty:
            continue
        if reply["parent_header"].get("msg_id") in sent:
            return time.monotonic()
    raise RuntimeError("no control-channel answer")


def measure(host, transport: str, kinds: List[str], repeat: int, after: float, spread: float,  # noqa: ANN001
            tmp: Path, show_log: bool) -> Dict[str, List[float]]:
    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    conn, _ = write_connection_file(str(tmp / f"kernel-bench-{transport}.json"), ip="127.0.0.1")
    log = tmp / f"proxy-{transport}.log"
    argv = [sys.executable, "-m", "ssh_ipykernel", "--host", host.alias, "--ssh-config", str(host.ssh_config),
            "--python", host.env_prefix, "--transport", transport, "--log-level", "DEBUG" if show_log else "INFO",
            "-f", conn]
    proxy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    results: Dict[str, List[float]] = {kind: [] for kind in kinds}
    kc = BlockingKernelClient(connection_file=conn)
    kc.load_connection_file()
    try:
        wait_log(log, r"channels up", 0, 60)
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        kc.execute("import time; time.sleep(100000)")
        time.sleep(0.5)
        control_answer(kc)
        offset = len(log.read_text(errors="replace"))
        for i in range(repeat):
            for kind in kinds:
                host.cut(kind)
                try:
                    offset = wait_log(log, r"WARNING .*reconnecting:", offset, 30)
                    time.sleep(after + spread * random.random())
                finally:
                    host.restore(kind)
                back, back_wall = time.monotonic(), time.time()
                answered = control_answer(kc) - back
                results[kind].append(answered)
                stamp = time.strftime("%H:%M:%S", time.localtime(back_wall)) + f".{int(back_wall * 1000) % 1000:03d}"
                print(f"{transport} {kind} #{i + 1}: link back at {stamp}, control channel answered "
                      f"{answered:.3f} s later (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
                end = wait_log(log, r"INFO .*up: reconnected[^\n]*\n", offset, 30)
                if show_log:
                    print(log.read_text(errors="replace")[offset:end], file=sys.stderr)
                offset = end
                time.sleep(1.0)
    finally:
        kc.stop_channels()
        proxy.terminate()
        try:
            proxy.wait(20)
        except subprocess.TimeoutExpired:
            proxy.kill()
    return results


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/reconnect.py cuts a netns test host's link: run it as root")
    from nshosts import NetnsHostFactory

    transports = args.transport.split(",")
    kinds = args.kinds.split(",")
    data: Dict[str, object] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(),
                               "loadavg": Path("/proc/loadavg").read_text().split()[:3], "results": {}}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sik-rc-")))
        os.environ["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
        factory = stack.enter_context(NetnsHostFactory())
        host = factory.create_host("btest")
        rtt = base_rtt(BenchHost(host.alias, host.env_prefix, str(host.ssh_config)))
        data["link_rtt_ms"] = 1000 * rtt
        for transport in transports:
            data["results"][transport] = measure(host, transport, kinds, args.repeat, args.after, args.spread, tmp,
                                                 args.show_log)
    print(f"link RTT (TCP connect to sshd, median): {1000 * rtt:.2f} ms; load {' '.join(data['loadavg'])}")
    print(f"{'transport':10} {'cut':10} {'n':>3} {'min':>7} {'median':>7} {'max':>7}   control-channel answer after the link is back (s)")
    for transport, by_kind in data["results"].items():
        for kind, times in by_kind.items():
            print(f"{transport:10} {kind:10} {len(times):3d} {min(times):7.3f} {statistics.median(times):7.3f} "
                  f"{max(times):7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
