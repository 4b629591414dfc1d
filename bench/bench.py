"""Benchmark: the SSH kernel against a direct local kernel, through jupyter_client.

    .venv/bin/python bench/bench.py                           # throwaway netns SSH host (root)
    .venv/bin/python bench/bench.py --rtt 0,50 --repeat 5 --plot docs/bench.png --json out.json
    .venv/bin/python bench/bench.py --host btest --python /opt/env [--ssh-config FILE]
    .venv/bin/python bench/bench.py --replot out.json --plot docs/bench.png   # table + plot again
    .venv/bin/python bench/bench.py --replot after.json --baseline before.json  # before beside after

Measures, for a local ipykernel (the reference) and the SSH kernel on each link: cold start
(start_kernel until the first kernel_info reply), start with a connection up (a second kernel
while one runs on the same host), restart, execute round trip p50/p99, 20 MB stream throughput,
interrupt latency, shutdown, the proxy's resident memory (alone, and with its ssh processes),
and N kernels started at once (until all answer kernel_info). Prints a table with each target
of issues 7 and 13 and whether it is met, computed from the local medians and the link's
round-trip time, the CPU seconds each process (proxy, ssh, sshd, keeper, kernel, ...) spent
on the stream, and can write the raw numbers as JSON and a PNG plot. --baseline puts an
earlier run's medians beside the new ones.

--rtt adds latency to the SSH link with a delaying ProxyCommand (bench/delay_relay.py): netem
is not available here. The kinds are measured in turns within each repeat, so that load from
other work on the machine spreads over all of them; medians are reported. A tool, not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Optional

from jupyter_client.kernelspec import KernelSpecManager

from links import BenchHost, base_rtt, delayed_config, install_kernelspecs, netns_host
from measure import many_kernels, single_kernel
from report import cpu_table, summarize, table, targets_text

METRICS = ("start", "warm_start", "restart", "rt", "stream", "interrupt", "shutdown", "rss", "many")
SINGLE = set(METRICS) - {"many"}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="an existing SSH host alias (default: build a netns test host; root)")
    parser.add_argument("--python", help="remote python or environment prefix (with --host)")
    parser.add_argument("--ssh-config", help="ssh config for --host (default ~/.ssh/config)")
    parser.add_argument("--transport", default="openssh",
                        help="SSH transport(s) to measure, comma-separated: openssh,paramiko (default openssh)")
    parser.add_argument("--rtt", default="0", help="added round-trip time(s) in ms, comma-separated: 0,50")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every measurement (default 3)")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(METRICS)}")
    parser.add_argument("--no-local", action="store_true", help="skip the local reference (no targets then)")
    parser.add_argument("--round-trips", type=int, default=200, help="round trips per repeat (default 200)")
    parser.add_argument("--stream-mb", type=float, default=20, help="MB printed by the stream cell (default 20)")
    parser.add_argument("--many", type=int, default=20, help="kernels started at once (default 20)")
    parser.add_argument("--cold-too", action="store_true",
                        help="also measure each link with --warm off (kinds '<link> cold'): every kernel starts cold")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--plot", help="write a PNG plot here (needs matplotlib: the bench extra)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--replot", metavar="JSON", help="no measuring: table (and --plot) from a --json file")
    parser.add_argument("--baseline", metavar="JSON",
                        help="an earlier run's --json (say, before a change): its medians beside the new ones, "
                             "and start and restart (over local) no slower than in it")
    args = parser.parse_args(argv)
    args.only = set(args.only.split(",")) if args.only else set(METRICS)
    unknown = args.only - set(METRICS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METRICS)}")
    args.rtts = [float(x) for x in args.rtt.split(",")]
    args.transports = args.transport.split(",")
    if set(args.transports) - {"openssh", "paramiko"}:
        parser.error("--transport: choose from openssh, paramiko")
    if args.repeat < 1 or args.many < 1 or args.round_trips < 1:
        parser.error("--repeat, --many and --round-trips must be at least 1")
    return args


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run(args: argparse.Namespace) -> dict:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sik-bench-")))
        os.environ["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")
        if args.host:
            host = BenchHost(args.host, args.python, args.ssh_config)
        else:
            host = netns_host(stack)
        base = base_rtt(host)
        kinds: Dict[str, dict] = {} if args.no_local else {"local": {"ssh": False, "kernel": "local"}}
        links = []
        for transport in args.transports:
            for rtt in args.rtts:
                # "ssh" is the OpenSSH transport (the labels of earlier results), "paramiko" the other.
                kind = "ssh" if transport == "openssh" else transport
                label = kind if rtt == 0 else f"{kind}+{rtt:g}ms"
                name = f"bench_{kind}" if rtt == 0 else f"bench_{kind}_rtt{rtt:g}"
                config = host.ssh_config if rtt == 0 else delayed_config(host, tmp, rtt)
                links.append((name, config, transport, []))
                kinds[label] = {"ssh": True, "kernel": name, "added_rtt_ms": rtt, "link_rtt_ms": rtt + 1000 * base,
                                "transport": transport}
                if args.cold_too:  # the same link without warm kernels, measured in the same turns
                    links.append((f"{name}_cold", config, transport, ["--warm", "off"]))
                    kinds[f"{label} cold"] = dict(kinds[label], kernel=f"{name}_cold")
        prefix, logs = tmp / "prefix", tmp / "logs"
        logs.mkdir()
        install_kernelspecs(host, prefix, links)
        ksm = KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])
        for info in kinds.values():
            info["runs"] = {}
        started = datetime.datetime.now().isoformat(timespec="seconds")
        load_before = loadavg()
        for repeat in range(args.repeat):
            # In turns, so that a burst of load from elsewhere hits every kind alike.
            for label, info in kinds.items():
                print(f"repeat {repeat + 1}/{args.repeat}: {label}", file=sys.stderr, flush=True)
                results = {}
                if args.only & SINGLE:
                    results.update(single_kernel(ksm, info["kernel"], logs, args.only, ssh=info["ssh"],
                                                 round_trips=args.round_trips,
                                                 stream_bytes=int(args.stream_mb * 1e6),
                                                 remote_pids=host.remote_pids))
                if "many" in args.only:
                    results.update(many_kernels(ksm, info["kernel"], args.many, logs,
                                                connections=host.connections if info["ssh"] else None))
                for key, values in results.items():
                    # rt is a list per repeat (percentiles are taken within a repeat); others one value.
                    info["runs"].setdefault(key, []).append(values if key == "rt" else values[0])
            data = {
                "meta": {"host": host.alias, "netns": not args.host, "repeat": repeat + 1,
                         "round_trips": args.round_trips, "stream_mb": args.stream_mb, "many": args.many,
                         "started": started, "loadavg_before": load_before, "loadavg_after": loadavg(),
                         "cpus": os.cpu_count(), "base_rtt_ms": 1000 * base},
                "kinds": {label: {k: v for k, v in info.items() if k != "kernel"} for label, info in kinds.items()},
            }
            if args.json:  # after every repeat: an interrupted run keeps what it measured
                Path(args.json).write_text(json.dumps(data, indent=1))
        return data


def sanity(data: dict) -> List[str]:
    """Warnings about results that mean the set-up, not the kernel, is off."""
    notes = []
    summary = summarize(data["kinds"])
    for label, info in data["kinds"].items():
        added = info.get("added_rtt_ms", 0) / 1000
        if added and summary[label].get("rt_p50", added) < added:
            notes.append(f"{label}: round trips faster than the added RTT: the kernel did not go through "
                         "the delaying relay (a shared connection keyed without the ssh config?)")
    return notes


def main() -> None:
    args = parse_args()
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
    else:
        data = run(args)
    meta = data["meta"]
    title = (f"{meta['repeat']} repeats on {meta['host']}{' (netns test host)' if meta['netns'] else ''}, "
             f"{meta['cpus']} CPUs, load {meta['loadavg_before']} -> {meta['loadavg_after']}, {meta['started']}")
    print(title)
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    if baseline:
        before = baseline["meta"]
        print(f"before: {args.baseline}, {before['repeat']} repeats, load {before['loadavg_before']} -> "
              f"{before['loadavg_after']}, {before['started']}")
    print(table(data["kinds"], markdown=args.markdown, many=meta["many"],
                baseline=baseline["kinds"] if baseline else None))
    print(targets_text(data["kinds"]))
    cpu = cpu_table(data["kinds"], markdown=args.markdown, baseline=baseline["kinds"] if baseline else None)
    if cpu:
        print()
        print(cpu)
    for note in sanity(data):
        print("warning:", note)
    if args.plot:
        from report import plot

        plot(data["kinds"], args.plot, title, many=meta["many"])
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
