"""Where the benchmark's SSH kernel runs: a throwaway netns test host or a real host alias,
reached directly or through a delaying ProxyCommand that adds round-trip time to the link."""
from __future__ import annotations

import contextlib
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
RELAY = Path(__file__).resolve().parent / "delay_relay.py"


@dataclass
class BenchHost:
    """An SSH host to benchmark against."""

    alias: str
    python: Optional[str]
    ssh_config: Optional[str]
    #: Counts the SSH connections the host has open (netns hosts only: their sshd is ours to see).
    connections: Optional[Callable[[], int]] = None
    #: Lists the host's processes (netns hosts only), for the CPU each spends on the stream.
    remote_pids: Optional[Callable[[], List[int]]] = None


def netns_host(stack: ExitStack) -> BenchHost:
    """A real sshd in a network namespace (tests/nshosts.py), torn down with ``stack`` (root)."""
    sys.path.insert(0, str(REPO / "tests"))
    from nshosts import NetnsHostFactory, ns_pids

    factory = stack.enter_context(NetnsHostFactory())
    host = factory.create_host("btest")

    def connections() -> int:
        # sshd keeps one privileged monitor per connection, titled "sshd: <user> [priv]".
        count = 0
        for pid in ns_pids(host.namespace):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").endswith(b"[priv]"):
                    count += 1
        return count

    return BenchHost(host.alias, host.env_prefix, str(host.ssh_config), connections,
                     lambda: ns_pids(host.namespace))


def destination(host: BenchHost) -> Tuple[str, int]:
    """The address and port ssh connects to for ``host`` (``ssh -G``)."""
    argv = ["ssh", "-G", *(["-F", host.ssh_config] if host.ssh_config else []), host.alias]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    opts = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    return opts["hostname"], int(opts.get("port", "22"))


def base_rtt(host: BenchHost, samples: int = 15) -> float:
    """Median TCP connect time to the host's sshd (one round trip), in seconds; 0 if unreachable
    from here (behind a ProxyJump, say)."""
    try:
        address = destination(host)
    except (subprocess.CalledProcessError, KeyError, ValueError):
        return 0.0
    times: List[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        try:
            with socket.create_connection(address, timeout=5):
                times.append(time.perf_counter() - t0)
        except OSError:
            return 0.0
        time.sleep(0.02)
    return statistics.median(times)


def delayed_config(host: BenchHost, directory: Path, rtt_ms: float) -> str:
    """An ssh config that reaches ``host`` through bench/delay_relay.py, adding ``rtt_ms`` per round
    trip, and otherwise reads the host's own config. Overrides a ProxyJump (first value wins)."""
    base = Path(os.path.expanduser(host.ssh_config or "~/.ssh/config"))
    relay = f"{shlex.quote(sys.executable)} -I -S {shlex.quote(str(RELAY))} --delay-ms {rtt_ms / 2:g} %h %p"
    path = directory / f"ssh_config_rtt{rtt_ms:g}"
    # The host's config copied in, not Included: the paramiko transport refuses Include.
    own = base.read_text() if base.is_file() else ""
    path.write_text(f"# bench: +{rtt_ms:g} ms RTT through delay_relay.py\n"
                    f"Host *\n    ProxyCommand {relay}\n\n{own}")
    os.chmod(path, 0o600)
    return str(path)


def install_kernelspecs(host: BenchHost, prefix: Path, links: List[Tuple[str, Optional[str], str, List[str]]]) -> None:
    """A local ipykernel spec "local" and one SSH kernelspec per (name, ssh config, transport,
    further manage options)."""
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "local"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name, config, transport, extra in links:
        cmd = [sys.executable, "-m", "ssh_ipykernel.manage", "--host", host.alias, "--name", name,
               "--prefix", str(prefix), "--transport", transport]
        cmd += ["--python", host.python] if host.python else []
        cmd += ["--ssh-config", config] if config else []
        subprocess.run(cmd + extra, check=True, stdout=subprocess.DEVNULL)
