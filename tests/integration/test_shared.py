"""One SSH connection per host, shared by its kernels (transport/master.py).

Connections are counted on the server (sshd logs one "Accepted publickey" per login) and on the
client (the ssh masters under the test's runtime dir). Nothing in a counting window may open a
connection of its own (``host.run`` does), so remote checks use ``remote_pids`` (read in /proc).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from kernels import (
    Kernel, accepted_logins, connection_file, cut, iopub_back_after, kernel_factory, local_ssh_children, manage,
    ssh_masters,
    start_proxy, stop_proxy, wait_for, wait_remote_clean, wait_until,
)

from ssh_ipykernel.connection import CHANNELS


@pytest.fixture
def kernels(ssh_host, tmp_path, jupyter_env):
    """Factory of (not yet started) kernels on one kernelspec; all shut down at the end."""
    with kernel_factory(ssh_host, tmp_path, "sh", str(jupyter_env.runtime)) as make:
        yield make


def local_ports(k: Kernel) -> List[int]:
    info = k.km.get_connection_info()
    return [int(info[ch]) for ch in CHANNELS]


def bindable(ports: List[int]) -> bool:
    """Whether a new listener could take these ports (with SO_REUSEADDR, as proxies and ssh's
    own -L do: connections that just ended leave TIME_WAIT entries on them)."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_kernels_on_one_host_share_one_connection_and_restarts_reuse_it(kernels, ssh_host, jupyter_env):
    before = accepted_logins(ssh_host)
    first = kernels()
    first.start()
    second = kernels()
    second.start()
    assert accepted_logins(ssh_host) - before == 1, "the second kernel made its own connection"
    masters = ssh_masters(str(jupyter_env.runtime))
    assert len(masters) == 1, masters
    assert "connected in" in first.log() and "(new connection)" in first.log()
    assert "(shared connection)" in second.log()
    assert first.value("1 + 1") == second.value("2 + 0") == "2"

    old = second.remote_pid()
    second.km.restart_kernel()
    second.kc.wait_for_ready(timeout=60)
    assert second.remote_pid() != old
    assert accepted_logins(ssh_host) - before == 1, "the restart made a new connection"
    assert ssh_masters(str(jupyter_env.runtime)) == masters


def test_kernels_started_at_once_make_exactly_one_connection(kernels, ssh_host, jupyter_env):
    before = accepted_logins(ssh_host)
    started = [kernels() for _ in range(8)]
    t0 = time.monotonic()
    for k in started:
        k.launch()
    for k in started:
        k.wait_ready(timeout=120)
    took = time.monotonic() - t0
    print(f"\n8 kernels started at once, all ready after {took:.1f} s")
    assert accepted_logins(ssh_host) - before == 1
    assert len(ssh_masters(str(jupyter_env.runtime))) == 1
    assert sum("(new connection)" in k.log() for k in started) == 1
    assert len({k.remote_pid() for k in started}) == 8


# ------------------------------------------------------------------ the proxy by hand
def test_the_connection_ends_persist_seconds_after_the_last_kernel(ssh_host, tmp_path, jupyter_env):
    runtime = str(jupyter_env.runtime)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = start_proxy(ssh_host, connection_file(tmp_path, "a"), logs[0], "--persist", "6")
    wait_for(logs[0], "channels up")
    master = ssh_masters(runtime)
    assert len(master) == 1
    stop_proxy(a, logs[0])
    time.sleep(1)
    assert ssh_masters(runtime) == master, "the connection ended with its last kernel"
    # A kernel started within the persist time joins it; the clock restarts when it leaves.
    b = start_proxy(ssh_host, connection_file(tmp_path, "b"), logs[1], "--persist", "6")
    wait_for(logs[1], "channels up")
    assert "(shared connection)" in logs[1].read_text()
    stop_proxy(b, logs[1])
    t0 = time.monotonic()
    while ssh_masters(runtime) and time.monotonic() - t0 < 20:
        time.sleep(0.1)
    gone = time.monotonic() - t0
    print(f"\n--persist 6: the connection ended {gone:.1f} s after the last kernel")
    assert not ssh_masters(runtime)
    # ssh counts whole seconds from the moment its last client left, a little before the
    # proxy's exit (which stop_proxy() waits for).
    assert 2.0 < gone < 10.0
    assert not wait_remote_clean(ssh_host, timeout=15)


def test_kill_9_of_a_proxy_frees_its_ports_and_spares_the_other_kernels(ssh_host, tmp_path, jupyter_env):
    runtime = str(jupyter_env.runtime)
    conns = [connection_file(tmp_path, name) for name in ("victim", "bystander")]
    logs = [tmp_path / "victim.log", tmp_path / "bystander.log"]
    victim = start_proxy(ssh_host, conns[0], logs[0], "--grace", "2")
    wait_for(logs[0], "channels up")
    bystander = start_proxy(ssh_host, conns[1], logs[1])
    wait_for(logs[1], "channels up")
    master = ssh_masters(runtime)
    import json

    ports = [json.loads(conns[0].read_text())[ch] for ch in CHANNELS]
    assert not bindable(ports)
    # A client connection through the victim's forwards (the heartbeat channel echoes).
    client = socket.create_connection(("127.0.0.1", json.loads(conns[0].read_text())["hb_port"]), timeout=10)
    deadline = time.monotonic() + 20
    while True:  # the kernel may still be binding its ports
        client.sendall(b"ping")
        try:
            if client.recv(16):
                break
        except socket.timeout:
            pass
        assert time.monotonic() < deadline, "no heartbeat through the forward"
        client.close()
        time.sleep(0.2)
        client = socket.create_connection(("127.0.0.1", json.loads(conns[0].read_text())["hb_port"]), timeout=2)
    victim.kill()
    victim.wait()
    client.settimeout(5)
    try:
        assert client.recv(16) == b"", "the killed proxy's client connection still reaches its kernel"
    except ConnectionResetError:
        pass
    client.close()
    deadline = time.monotonic() + 5
    while not bindable(ports) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bindable(ports), "the killed proxy's forwards still hold its local ports"
    print(f"\nkill -9 of a proxy: its local ports were free {5 - (deadline - time.monotonic()):.2f} s later")
    assert ssh_masters(runtime) == master
    # Its successor (Jupyter's restart after a kill: same connection file, same ports) starts.
    successor = start_proxy(ssh_host, conns[0], tmp_path / "successor.log")
    wait_for(tmp_path / "successor.log", "channels up")
    assert "(shared connection)" in (tmp_path / "successor.log").read_text()
    stop_proxy(successor, tmp_path / "successor.log")
    assert "reconnect" not in logs[1].read_text()
    stop_proxy(bystander, logs[1])
    assert not wait_remote_clean(ssh_host, timeout=20)
    assert not local_ssh_children(runtime)


#: The README's figures: a kernel answers ~1 s after a fault ends (0.6 s after a 20 s cut, 0.8 s
#: after the master was killed). Three kernels at once on a loaded 2-core machine get a margin.
BACK_WITHIN = 6.0


def first_answer(k: Kernel, since: float, timeout: float) -> float:
    """Ask for the kernel's ``state`` until it answers; seconds from ``since``. Only a request
    that timed out (no answer yet: the forwards are not back) is asked again; a wrong answer or
    any other error fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            k.value("state", timeout=2)
            return time.monotonic() - since
        except TimeoutError:
            assert time.monotonic() < deadline, f"no answer within {timeout} s\n{k.log()}"


@pytest.mark.slow
def test_kernels_recover_together_over_one_new_connection(kernels, ssh_host, jupyter_env):
    """kill -9 of the shared master, then a cut longer than the loss timeout: each time every
    kernel comes back with its state, and all of them share one new connection."""
    runtime = str(jupyter_env.runtime)
    started = [kernels() for _ in range(3)]
    for k in started:
        k.launch()
    for k in started:
        k.wait_ready(timeout=120)
    pids = [k.remote_pid() for k in started]
    for i, k in enumerate(started):
        k.execute(f"state = {i}")
    for fault in ("kill", "cut"):
        before = accepted_logins(ssh_host)
        master = ssh_masters(runtime)
        assert len(master) == 1, master
        t0 = time.monotonic()
        if fault == "kill":
            os.kill(master[0], signal.SIGKILL)
        else:
            # Past the proxies' 6 s loss timeout: each one notices and reconnects by itself.
            with cut(ssh_host):
                time.sleep(10)
            t0 = time.monotonic()
        for k in started:
            back_in = first_answer(k, since=t0, timeout=30)
            assert back_in < BACK_WITHIN, f"{k.log_path.name} answered {back_in:.1f} s after the {fault}\n{k.log()}"
        took = time.monotonic() - t0
        print(f"\n{fault}: all 3 kernels answered {took:.2f} s after the fault ended")
        assert took < BACK_WITHIN, "\n".join(k.log() for k in started)
        assert [k.remote_pid() for k in started] == pids
        assert [k.value("state") for k in started] == ["0", "1", "2"]
        now = ssh_masters(runtime)
        assert len(now) == 1 and now != master, (master, now)
        assert accepted_logins(ssh_host) - before == 1, \
            f"after the {fault}, not exactly one new connection\n" + "\n".join(k.log() for k in started)


def test_a_lost_session_on_a_live_connection_keeps_the_connection(kernels, ssh_host, jupyter_env):
    """One kernel's session ends while the connection is fine (here: its ssh session process
    is killed): it re-attaches over the same connection, and the other kernel does not notice."""
    runtime = str(jupyter_env.runtime)
    a, b = kernels(), kernels()
    a.start()
    b.start()
    master = ssh_masters(runtime)
    before = accepted_logins(ssh_host)
    pid_a = a.remote_pid()
    out = subprocess.run(["pgrep", "-P", str(a.proxy.pid), "-f", "RequestTTY=no"],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    os.kill(int(out[0]), signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(Path(a.log_path), "reconnected after", timeout=30)
    print(f"\nsession killed: re-attached {time.monotonic() - t0:.2f} s later")
    assert iopub_back_after(a, t0) < 6, a.log()  # output published before iopub is back is lost
    assert a.remote_pid() == pid_a
    assert ssh_masters(runtime) == master
    assert accepted_logins(ssh_host) == before
    assert "reconnect" not in b.log()


def test_kernels_beyond_the_servers_max_sessions_still_start(host_factory, tmp_path, jupyter_env):
    """sshd refuses a second session on one connection here (MaxSessions 1): the second kernel's
    session logs in by itself, and both kernels work (their forwards share the connection)."""
    import re

    host = host_factory.create_host("mstest")
    started: List[Kernel] = []
    try:
        config = host.dir / "sshd_config"
        config.write_text(re.sub(r"MaxSessions \d+", "MaxSessions 1", config.read_text()))
        host.restart_sshd()
        prefix = tmp_path / "prefix"
        manage(host, prefix, "--host", host.alias, "--python", host.env_prefix, "--name", "ms")
        for i in range(2):
            k = Kernel(prefix, "ms", tmp_path / f"ms-{i}.log")
            started.append(k)
            k.start()
        assert [k.value(f"{i} + 1") for i, k in enumerate(started)] == ["1", "2"]
        assert len(ssh_masters(str(jupyter_env.runtime))) == 1
        assert accepted_logins(host) == 2
    finally:
        for k in started:
            k.shutdown()
        assert not wait_remote_clean(host, timeout=20)
        host.close()


def test_a_connection_that_died_silently_is_replaced_before_a_kernel_joins_it(ssh_host, tmp_path, jupyter_env):
    """The shared connection is up but nobody has heard through it lately, and the server side
    no longer answers (here: its sshd process is stopped): the next kernel checks it, ends it
    and logs in anew instead of hanging on it."""
    runtime = str(jupyter_env.runtime)
    # Another test's connection may still be up (ControlPersist): ours is the new sshd session.
    others = set(ssh_host.remote_pids(r"^sshd: \S+@notty"))
    first = start_proxy(ssh_host, connection_file(tmp_path, "first"), tmp_path / "first.log")
    wait_for(tmp_path / "first.log", "channels up")
    stop_proxy(first, tmp_path / "first.log")
    master = ssh_masters(runtime)
    assert len(master) == 1
    # The server side of that connection: the sshd process of the user's session.
    session = [p for p in ssh_host.remote_pids(r"^sshd: \S+@notty") if p and p not in others]
    assert len(session) == 1, (session, others)
    os.kill(session[0], signal.SIGSTOP)
    try:
        directory = os.path.join(runtime, "ssh_ipykernel")
        alive = [os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".alive")]
        assert len(alive) == 1
        os.utime(alive[0], (time.time() - 60, time.time() - 60))  # nobody heard anything lately
        before = accepted_logins(ssh_host)
        log = tmp_path / "second.log"
        t0 = time.monotonic()
        second = start_proxy(ssh_host, connection_file(tmp_path, "second"), log)
        wait_for(log, "channels up")
        print(f"\nstale connection checked and replaced; kernel up {time.monotonic() - t0:.1f} s after start")
        assert "does not answer; starting a new one" in log.read_text()
        assert "(new connection)" in log.read_text()
        assert accepted_logins(ssh_host) == before + 1
        # The stale one was told to end; on a busy machine it may take a moment to go.
        wait_until(lambda: ssh_masters(runtime) and master[0] not in ssh_masters(runtime), 10,
                   "the stale connection's master ended")
        assert len(ssh_masters(runtime)) == 1
        stop_proxy(second, log)
    finally:
        os.kill(session[0], signal.SIGCONT)
    assert not wait_remote_clean(ssh_host, timeout=20)


def test_disconnect_ends_the_shared_connection_and_kernels_reconnect(kernels, ssh_host, jupyter_env):
    k = kernels()
    k.start()
    pid = k.remote_pid()
    masters = ssh_masters(str(jupyter_env.runtime))
    assert len(masters) == 1

    def disconnect(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", "from ssh_ipykernel.cli import main; main()", "disconnect", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    other = disconnect("--host", "elsewhere", "--ssh-config", str(ssh_host.ssh_config))
    assert other.returncode == 0 and "No shared SSH connection to elsewhere is open" in other.stdout
    assert ssh_masters(str(jupyter_env.runtime)) == masters  # another host's name ends nothing

    r = disconnect("--host", ssh_host.alias, "--ssh-config", str(ssh_host.ssh_config))
    assert r.returncode == 0, r.stderr
    assert f"ssh master pid {masters[0]}" in r.stdout
    deadline = time.monotonic() + 5
    while masters[0] in ssh_masters(str(jupyter_env.runtime)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert masters[0] not in ssh_masters(str(jupyter_env.runtime))
    # The proxy notices at once (the control connection ends) and reconnects to the same kernel.
    assert k.remote_pid() == pid
    deadline = time.monotonic() + 10  # the forwards come back before the keeper's re-attach
    while "reconnected" not in k.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reconnected" in k.log()
    new = ssh_masters(str(jupyter_env.runtime))
    assert len(new) == 1 and new != masters
