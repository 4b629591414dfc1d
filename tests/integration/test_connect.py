"""``ssh-ipykernel connect``: a kernel somebody started on the remote, used from here.

The Hydrogen / ``--existing`` workflow: a kernel started by hand on the remote (fixed ports, as in
a container setup), tunnels from ``connect``, and real clients on the local connection file:
jupyter_client's BlockingKernelClient and ``jupyter console --existing`` driven by pexpect.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from jupyter_client import BlockingKernelClient

from kernels import cut, local_ssh_children, transport_args, wait_for, wait_remote_clean

REMOTE_FILE = "/tmp/by-hand/kernel-fixed.json"
FIXED_PORTS = {"shell": 50101, "iopub": 50102, "stdin": 50103, "control": 50104, "hb": 50105}


@pytest.fixture
def by_hand_kernel(ssh_host):
    """A kernel started on the remote the way a user would, outside ssh_ipykernel."""
    ports = " ".join(f"--{name}={port}" for name, port in FIXED_PORTS.items())
    r = ssh_host.run(
        f"mkdir -p /tmp/by-hand; nohup {ssh_host.env_python} -m ipykernel_launcher -f {REMOTE_FILE} "
        f"{ports} --ip=127.0.0.1 </dev/null >/tmp/by-hand/log 2>&1 & echo $!"
    )
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split()[-1])
    deadline = time.monotonic() + 30
    while ssh_host.run(f"test -s {REMOTE_FILE}").returncode != 0:
        assert time.monotonic() < deadline, ssh_host.run("cat /tmp/by-hand/log").stdout
        time.sleep(0.2)
    yield pid
    ssh_host.run(f"kill {pid}; rm -rf /tmp/by-hand")


def start_connect(host, remote_file: str, local: Path, log: Path, *args: str) -> subprocess.Popen:
    # What the ssh-ipykernel console script runs.
    argv = [sys.executable, "-c", "from ssh_ipykernel.cli import main; main()", "connect", "--host", host.alias,
            "--ssh-config", str(host.ssh_config), "--python", host.env_python, "--local-file", str(local),
            *transport_args(), *args, remote_file]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def client(local: Path) -> BlockingKernelClient:
    kc = BlockingKernelClient(connection_file=str(local))
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=30)
    return kc


def output_of(kc: BlockingKernelClient, code: str, timeout: float = 30) -> str:
    out = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: m["msg_type"] == "stream"
                                   and out.append(m["content"]["text"]))
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out).strip()


@pytest.mark.both_transports
def test_connect_to_a_kernel_started_by_hand(ssh_host, by_hand_kernel, tmp_path, jupyter_env):
    local, log = tmp_path / "local.json", tmp_path / "connect.log"
    proc = start_connect(ssh_host, REMOTE_FILE, local, log)
    try:
        wait_for(log, "jupyter console --existing")
        info = json.loads(local.read_text())
        assert oct(os.stat(local).st_mode & 0o777) == "0o600"
        remote = json.loads(ssh_host.run(f"cat {REMOTE_FILE}").stdout)
        assert info["key"] == remote["key"] and info["ip"] == "127.0.0.1"
        assert info["key"] not in log.read_text()
        kc = client(local)
        try:
            assert output_of(kc, "import socket, os; print(socket.gethostname(), os.getpid())") == \
                f"{ssh_host.hostname} {by_hand_kernel}"
            output_of(kc, "kept = 'yes'")
            # The same supervisor as the proxy: a cut link is survived.
            with cut(ssh_host):
                time.sleep(8)
            assert output_of(kc, "print(kept)", timeout=30) == "yes"
            assert proc.poll() is None
        finally:
            kc.stop_channels()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, log.read_text()
    except BaseException:
        print(f"--- connect log ---\n{log.read_text()}")  # shown by pytest with the failure
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "reconnected" in log.read_text()
    assert not local.exists()  # the local file goes with the tunnels
    assert ssh_host.run(f"kill -0 {by_hand_kernel}").returncode == 0  # never stopped from here
    assert not local_ssh_children(str(jupyter_env.runtime))


def test_jupyter_console_existing_through_connect(ssh_host, by_hand_kernel, tmp_path):
    local, log = tmp_path / "local.json", tmp_path / "connect.log"
    proc = start_connect(ssh_host, REMOTE_FILE, local, log)
    try:
        wait_for(log, "jupyter console --existing")
        console = pexpect.spawn(sys.executable, ["-m", "jupyter_console", "--existing", str(local),
                                                 "--ZMQTerminalInteractiveShell.confirm_exit=False",
                                                 "--simple-prompt"],
                                timeout=60, encoding="utf-8", env=dict(os.environ, TERM="dumb"))
        try:
            console.expect(r"In \[\d+\]")
            console.sendline("import socket; print('host=' + socket.gethostname())")
            console.expect(f"host={ssh_host.hostname}")
            console.sendline("exit(keep_kernel=True)")  # plain exit would shut the kernel down
            console.expect(pexpect.EOF)
        finally:
            console.close(force=True)
        assert proc.poll() is None  # a client leaving does not end the tunnels
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert ssh_host.run(f"kill -0 {by_hand_kernel}").returncode == 0


def test_connect_reattaches_to_a_detached_ssh_kernel(ssh_host, tmp_path, jupyter_env):
    from jupyter_client.connect import write_connection_file

    conn, _ = write_connection_file(str(tmp_path / "kernel-detach.json"), ip="127.0.0.1")
    plog = tmp_path / "proxy.log"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "ssh_ipykernel", "--host", ssh_host.alias, "--ssh-config", str(ssh_host.ssh_config),
         "--python", ssh_host.env_prefix, "--grace", "3", "-f", conn],
        stdin=subprocess.DEVNULL, stdout=plog.open("wb"), stderr=subprocess.STDOUT)
    wait_for(plog, "channels up")
    kernels = ssh_host.remote_pids("ipykernel_launcher")
    proxy.send_signal(signal.SIGQUIT)
    assert proxy.wait(10) == 0
    remote_file = plog.read_text().split("Reattach with: ssh-ipykernel connect --host btest ")[1].split()[0]
    local, log = tmp_path / "local.json", tmp_path / "connect.log"
    proc = start_connect(ssh_host, remote_file, local, log)
    try:
        wait_for(log, "jupyter console --existing")
        time.sleep(5)  # longer than the grace period: an attached client holds it off
        assert ssh_host.remote_pids("ipykernel_launcher") == kernels
        kc = client(local)
        try:
            assert output_of(kc, "import os; print(os.getpid())") == str(kernels[0])
        finally:
            kc.stop_channels()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not wait_remote_clean(ssh_host, timeout=20)  # the grace period runs again once we left


def test_connect_to_a_missing_file_says_what_to_give(ssh_host, tmp_path, jupyter_env):
    local, log = tmp_path / "local.json", tmp_path / "connect.log"
    proc = start_connect(ssh_host, "/tmp/no/such.json", local, log)
    assert proc.wait(30) == 34, log.read_text()
    assert "no kernel to connect to at /tmp/no/such.json" in log.read_text()
    assert "jupyter --runtime-dir" in log.read_text()
    assert not local.exists()
    assert not local_ssh_children(str(jupyter_env.runtime))
