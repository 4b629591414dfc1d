"""Try ssh_ipykernel end to end on a throwaway SSH test host (run as root).

Builds a host in a network namespace (own address and hostname, real sshd, non-root user, a
Python env that exists only there), registers it with ``python -m ssh_ipykernel.manage`` exactly
as a user would, then drives the kernel through jupyter_client's KernelManager: run code, interrupt
a sleeping cell, restart, shut down. Everything is removed at the end.

Arguments are passed on to ``manage``: ``tools/demo.py --transport paramiko`` tries the
pure-Python transport, ``tools/demo.py --env GREETING=hello`` a remote environment variable.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from nshosts import NetnsHostFactory  # noqa: E402


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_cell(kc, code: str, timeout: float = 60) -> dict:
    def show(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            print("   | " + msg["content"]["text"].rstrip().replace("\n", "\n   | "))
        elif msg["msg_type"] in ("execute_result", "display_data"):
            print("   | " + msg["content"]["data"].get("text/plain", ""))
        elif msg["msg_type"] == "error":
            print(f"   | {msg['content']['ename']}: {msg['content']['evalue']}")

    return kc.execute_interactive(code, timeout=timeout, output_hook=show)["content"]


def main() -> int:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__.strip())
        return 0
    if os.geteuid() != 0:
        print("demo.py builds a network-namespace SSH host and needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sik-demo-") as tmp, NetnsHostFactory() as factory:
        os.environ["JUPYTER_RUNTIME_DIR"] = f"{tmp}/runtime"
        step("creating an SSH test host")
        host = factory.create_host("btest")
        print(f"   {host.alias}: {host.user}@{host.address}, hostname {host.hostname}, "
              f"remote env {host.env_prefix}, ssh config {host.ssh_config}")

        step("registering it: python -m ssh_ipykernel.manage")
        prefix = Path(tmp) / "prefix"
        cmd = [sys.executable, "-m", "ssh_ipykernel.manage", "--host", host.alias, "--python",
               host.env_prefix, "--ssh-config", str(host.ssh_config), "--prefix", str(prefix), *sys.argv[1:]]
        print("   $ python " + " ".join(cmd[1:]))
        subprocess.run(cmd, check=True)

        ksm = KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])
        km = KernelManager(kernel_name="ssh_btest", kernel_spec_manager=ksm)
        step("starting the kernel through jupyter_client.KernelManager (proxy log below)")
        t0 = time.monotonic()
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        print(f"   ready in {time.monotonic() - t0:.2f} s")

        step("running code there")
        run_cell(kc, "import os, socket, sys, time\nprint(socket.gethostname(), sys.executable, os.getpid())\nx = 42")
        print(f"   (here: {os.uname().nodename}; {host.env_prefix} exists locally: {os.path.exists(host.env_prefix)})")

        step("interrupting time.sleep(60)")
        msg_id = kc.execute("time.sleep(60)")
        time.sleep(1.5)
        t0 = time.monotonic()
        km.interrupt_kernel()
        while True:
            msg = kc.get_shell_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        print(f"   {msg['content'].get('ename')} after {1000 * (time.monotonic() - t0):.0f} ms; x is still", end=" ")
        run_cell(kc, "x")

        step("restarting")
        t0 = time.monotonic()
        km.restart_kernel()
        kc.wait_for_ready(timeout=60)
        print(f"   restarted in {time.monotonic() - t0:.2f} s")
        run_cell(kc, "print('x' in dir(), __import__('os').getpid())")

        step("shutting down")
        kc.stop_channels()
        t0 = time.monotonic()
        km.shutdown_kernel()
        print(f"   shut down in {time.monotonic() - t0:.2f} s")
        left = host.remote_pids("ipykernel_launcher")
        files = host.run(f"ls -A {host.runtime_dir} 2>/dev/null").stdout.split()
        print(f"   left on the remote: processes {left or 'none'}, files {files or 'none'}")
        return 0 if not left and not [f for f in files if f.startswith("kernel-ssh-")] else 1


if __name__ == "__main__":
    sys.exit(main())
