"""An SSH kernel driven through jupyter_client's KernelManager, as Jupyter front ends do."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernels import (
    Kernel,
    all_cmdlines,
    local_ssh_children,
    manage,
    passphrase_copy,
    remote_connection_info,
    shutdown_all,
    ssh_agent,
    wait_remote_clean,
)

pytestmark = pytest.mark.both_transports

WHERE = "(__import__('socket').gethostname(), __import__('sys').executable)"


@pytest.fixture
def kernel(ssh_host, jupyter_env, tmp_path):
    """Factory: register the host with manage (given args) and start a kernel on it."""
    started = []

    def make(*manage_args: str, name: str = "ssh_btest") -> Kernel:
        prefix = tmp_path / "prefix"
        manage(ssh_host, prefix, "--host", ssh_host.alias, *manage_args)
        k = Kernel(prefix, name, tmp_path / f"proxy-{len(started)}.log")
        started.append(k)
        k.start()
        return k

    yield make
    shutdown_all(started)
    left = wait_remote_clean(ssh_host)
    assert not left, f"left on the remote after the test: {left}"


def assert_runs_remotely(k: Kernel, host, python: str = "") -> None:
    assert k.value(WHERE) == str((host.hostname, python or host.env_python))
    assert host.hostname != __import__("socket").gethostname()
    assert not os.path.exists(host.env_prefix), "the remote env must not exist locally"


def test_env_prefix_runs_code_on_the_remote(kernel, ssh_host, transport):
    k = kernel("--python", ssh_host.env_prefix)
    assert_runs_remotely(k, ssh_host)
    content, out, outputs = k.execute(
        "from IPython.display import HTML, display\n"
        "print('hello from', __import__('socket').gethostname())\n"
        "display(HTML('<b>rich</b>'))\n"
        "6 * 7"
    )
    assert content["status"] == "ok"
    assert out == f"hello from {ssh_host.hostname}\n"
    kinds = {m["msg_type"]: m["content"]["data"] for m in outputs}
    assert kinds["display_data"]["text/html"] == "<b>rich</b>"
    assert kinds["execute_result"]["text/plain"] == "42"
    assert "connected in" in k.log() and "channels up" in k.log()
    assert f"connection) with {transport}" in k.log()


def test_interpreter_path(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_python)
    assert_runs_remotely(k, ssh_host)


def test_default_is_python3_on_the_remote_path(kernel, ssh_host):
    k = kernel()
    # The remote PATH (~/.ssh/environment on the test host) puts the env's bin/ first.
    assert_runs_remotely(k, ssh_host, python=f"{ssh_host.env_prefix}/bin/python3")


def test_interrupt_raises_keyboardinterrupt_and_keeps_state(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_prefix)
    k.execute("x = 42; import os, time")
    pid = k.value("os.getpid()")
    msg_id = k.kc.execute("print('sleeping', flush=True); time.sleep(60)")
    deadline = time.monotonic() + 30  # inside sleep(), not still receiving or compiling the cell
    while True:
        try:
            msg = k.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"the cell never printed\n{k.log()}") from None
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    elapsed = k.interrupt_cell(msg_id)
    assert elapsed < 10
    assert k.value("x") == "42"
    assert k.value("os.getpid()") == pid
    assert k.proxy.poll() is None


RELAY = Path(__file__).resolve().parents[2] / "bench" / "delay_relay.py"


def test_through_a_proxycommand_an_interrupt_keeps_the_connection(kernel, ssh_host, tmp_path):
    """Jupyter interrupts with killpg on the proxy's group: a ProxyCommand must not be in it."""
    config = tmp_path / "ssh_config_proxied"
    config.write_text(f"Host {ssh_host.alias}\n  ProxyCommand {sys.executable} -I -S {RELAY} --delay-ms 0 %h %p\n\n"
                      + ssh_host.ssh_config.read_text())
    config.chmod(0o600)
    k = kernel("--python", ssh_host.env_prefix, "--ssh-config", str(config))
    k.execute("import time")
    msg_id = k.kc.execute("time.sleep(60)")
    k.wait_busy(msg_id)
    time.sleep(0.5)
    k.interrupt_cell(msg_id)
    time.sleep(1)
    assert k.value("6 * 7") == "42"
    assert "reconnect" not in k.log(), k.log()


def test_restart_gives_a_fresh_kernel_and_ends_the_old_one(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_prefix)
    k.execute("x = 1")
    old_pid = int(k.value("__import__('os').getpid()"))
    k.km.restart_kernel()
    k.kc.wait_for_ready(timeout=60)
    assert k.value("'x' in dir()") == "False"
    new_pid = int(k.value("__import__('os').getpid()"))
    assert new_pid != old_pid
    assert ssh_host.run(f"kill -0 {old_pid}").returncode != 0, "old kernel still alive"
    files = ssh_host.run(f"ls {ssh_host.runtime_dir}").stdout.split()
    assert len([f for f in files if f.endswith(".json") and f.startswith("kernel-ssh-")]) == 1, files
    assert_runs_remotely(k, ssh_host)


def test_shutdown_leaves_nothing(kernel, ssh_host, jupyter_env, transport):
    k = kernel("--python", ssh_host.env_prefix)
    pid = int(k.value("__import__('os').getpid()"))
    proxy = k.proxy
    t0 = time.monotonic()
    k.shutdown()
    took = time.monotonic() - t0
    assert proxy.poll() == 0, k.log()
    assert took < 5, f"shutdown took {took:.1f} s"
    assert not wait_remote_clean(ssh_host, pid, timeout=5)
    assert not local_ssh_children(str(jupyter_env.runtime))
    directory = os.path.join(str(jupyter_env.runtime), "ssh_ipykernel")
    left = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    # The kernel's pool record stays, saying when it ended, until its warm pool has ended too
    # (status, and a restart's agent server, read it; state.prune removes it then).
    records = [name for name in left if name.startswith("pool-")]
    assert len(records) == 1 and "ended" in json.loads(open(os.path.join(directory, records[0])).read()), records
    left = [name for name in left if name not in records]
    if transport == "paramiko":
        assert left == [], left  # its connection was the proxy's own, and ended with it
    else:
        # Only the host's shared connection stays (its socket, lock and last-heard files).
        assert len(left) == 3 and left[1:] == [left[0] + ".alive", left[0] + ".lock"], left


def test_sigterm_to_the_proxy_shuts_the_kernel_down(kernel, ssh_host, jupyter_env):
    k = kernel("--python", ssh_host.env_prefix)
    pid = int(k.value("__import__('os').getpid()"))
    msg_id = k.kc.execute("import time; time.sleep(60)")  # a busy kernel must not hold it up
    k.wait_busy(msg_id)
    t0 = time.monotonic()
    k.proxy.send_signal(signal.SIGTERM)
    assert k.proxy.wait(15) == 0, k.log()
    assert time.monotonic() - t0 < 4, f"shutdown waited for the busy cell or a timeout:\n{k.log()}"
    assert "SIGTERM: shutting the kernel down" in k.log()
    assert not wait_remote_clean(ssh_host, pid, timeout=10)
    assert not local_ssh_children(str(jupyter_env.runtime))


def test_sighup_to_the_proxy_shuts_the_kernel_down(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_prefix)
    pid = int(k.value("__import__('os').getpid()"))
    k.proxy.send_signal(signal.SIGHUP)
    assert k.proxy.wait(15) == 0, k.log()
    assert not wait_remote_clean(ssh_host, pid, timeout=10)


def test_kill_9_of_the_proxy_leaves_nothing(kernel, ssh_host, jupyter_env):
    k = kernel("--python", ssh_host.env_prefix, "--grace", "2")
    pid = int(k.value("__import__('os').getpid()"))
    k.proxy.kill()
    k.proxy.wait(5)
    # The ssh children die with the proxy (PDEATHSIG); the keeper sees its session end and
    # shuts the kernel down once the grace period is over.
    assert not wait_remote_clean(ssh_host, pid, timeout=20)
    deadline = time.monotonic() + 5
    while local_ssh_children(str(jupyter_env.runtime)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not local_ssh_children(str(jupyter_env.runtime))


def test_kernel_crash_makes_the_proxy_exit_nonzero(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_prefix)
    pid = int(k.value("__import__('os').getpid()"))
    k.kc.execute("import os; os._exit(3)")
    assert k.proxy.wait(15) == 1, k.log()
    assert "the remote kernel died (exit code 3)" in k.log()
    assert not k.km.is_alive()
    assert not wait_remote_clean(ssh_host, pid, timeout=10)


def test_key_stays_secret(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_prefix)
    key = k.km.session.key
    assert len(key) >= 16
    assert key not in all_cmdlines(), "session key visible in a process command line"
    info = remote_connection_info(ssh_host)
    assert info["key"] == key.decode()
    mode = ssh_host.run(f"stat -c %a {ssh_host.runtime_dir}/kernel-ssh-*.json").stdout.split()
    assert mode == ["600"], mode
    k.execute("print('some output')")
    assert key.decode() not in k.log()


def test_kernel_listens_on_private_unix_sockets_only(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_prefix)
    pid = int(k.value("__import__('os').getpid()"))
    info = remote_connection_info(ssh_host)
    assert info["transport"] == "ipc", info
    directory = os.path.dirname(info["ip"])
    mode = ssh_host.run(f"stat -c %a {directory}").stdout.strip()
    assert mode == "700", (directory, mode)
    sockets = ssh_host.run(f"ls {directory}").stdout.split()
    assert sorted(sockets) == [f"k-{n}" for n in range(1, 6)], sockets
    # No channel of the kernel listens on TCP. ipykernel's one TCP socket is the pipe its forked
    # subprocesses push their output into (a PULL socket: nothing can be read from it, and it
    # takes only messages carrying a secret of the kernel's).
    pipe = int(k.value("getattr(getattr(__import__('sys').stdout, 'pub_thread', None), '_pipe_port', 0) or 0"))
    listening = [line for line in ssh_host.run("ss -Hltnp").stdout.splitlines() if f"pid={pid}," in line]
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening}
    assert ports <= {pipe}, listening
    assert k.value("1 + 1") == "2"


def test_env_values_arrive_exactly_and_run_nothing(kernel, ssh_host, tmp_path):
    marker = "/tmp/sik-env-marker"
    ssh_host.run(f"rm -f {marker}")
    hostile = f"$(touch {marker}) `touch {marker}`; touch {marker} 'q' \"d\" \\ end"
    k = kernel("--python", ssh_host.env_prefix, "--env", f"SIK_HOSTILE={hostile}", "--env", "SIK_EMPTY=")
    assert k.value("repr(__import__('os').environ['SIK_HOSTILE'])") == repr(hostile)
    assert k.value("repr(__import__('os').environ['SIK_EMPTY'])") == "''"
    assert ssh_host.run(f"test -e {marker}").returncode != 0
    assert not os.path.exists(marker)


def test_stderr_progress_lines(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_prefix)
    log = k.log()
    for stage in ("connecting to", "connected in", "launching kernel with", "launched in", "channels up in"):
        assert stage in log, (stage, log)


def test_sudo_runs_the_kernel_as_root_and_cleans_up(kernel, ssh_host):
    if ssh_host.run("sudo -n true").returncode != 0:
        pytest.skip("the test host's user has no passwordless sudo")
    k = kernel("--python", ssh_host.env_prefix, "--sudo", "--env", "SIK_X=1")
    assert k.value("(__import__('os').geteuid(), __import__('os').environ['SIK_X'])") == "(0, '1')"
    pid = int(k.value("__import__('os').getpid()"))
    k.shutdown()
    deadline = time.monotonic() + 10  # as wait_remote_clean() allows: the keeper removes them as it ends
    while True:
        left = ssh_host.run("sudo -n sh -c 'ls -A ~root/.local/share/jupyter/runtime 2>/dev/null'").stdout.split()
        left = [f for f in left if f.startswith("kernel-ssh-")]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert not left, left
    assert ssh_host.run(f"sudo -n kill -0 {pid}").returncode != 0, "root kernel still running"


@pytest.mark.parametrize("form", ["{user}@{address}", "{user}@{address}:22", "ssh://{user}@{address}:22"])
def test_host_forms_other_than_an_alias(ssh_host, tmp_path, form):
    client = getattr(getattr(ssh_host, "factory", None), "client", None)
    if client is None:
        pytest.skip("needs the netns host's client files")
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host {ssh_host.address}\n  IdentityFile {client.identity}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {client.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
        f"  StrictHostKeyChecking yes\n"
    )
    config.chmod(0o600)
    spec = form.format(user=ssh_host.user, address=ssh_host.address)
    prefix = tmp_path / "prefix"
    host = type("H", (), {"ssh_config": config})()
    manage(host, prefix, "--host", spec, "--python", ssh_host.env_prefix, "--name", "forms")
    k = Kernel(prefix, "forms", tmp_path / "proxy.log")
    try:
        k.start()
        assert k.value(WHERE) == str((ssh_host.hostname, ssh_host.env_python))
    finally:
        k.shutdown()
    assert not wait_remote_clean(ssh_host)


def test_key_printed_by_the_kernel_is_redacted_from_the_log(kernel, ssh_host):
    k = kernel("--python", ssh_host.env_prefix)
    key = k.km.session.key.decode()
    # Straight to the kernel process's fd 2, which the agent relays to the proxy's stderr.
    k.execute(f"import os; os.write(2, b'leak? {key} end\\n')")
    deadline = time.monotonic() + 10
    while "leak? <key> end" not in k.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "leak? <key> end" in k.log()
    assert key not in k.log()


def test_debugger_protocol_works_through_the_tunnel(kernel, ssh_host):
    """The kernelspec advertises the debugger to JupyterLab: debug_request must be answered."""
    k = kernel("--python", ssh_host.env_prefix)
    assert k.km.kernel_spec.metadata["debugger"] is True
    msg = k.kc.session.msg("debug_request", {
        "type": "request", "seq": 1, "command": "initialize",
        "arguments": {"clientID": "t", "adapterID": "python", "pathFormat": "path",
                      "linesStartAt1": True, "columnsStartAt1": True}})
    k.kc.control_channel.send(msg)
    deadline = time.monotonic() + 30
    while True:
        reply = k.kc.control_channel.get_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            break
    assert reply["msg_type"] == "debug_reply"
    assert reply["content"]["success"] is True, reply["content"]


def test_several_kernels_on_one_host_at_once(ssh_host, tmp_path):
    """Each kernel gets its own remote process, ports and files; shutting one down spares the others."""
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix)
    kernels = [Kernel(prefix, "ssh_btest", tmp_path / f"proxy-{i}.log") for i in range(3)]
    try:
        for k in kernels:
            k.launch()
        for k in kernels:
            k.wait_ready()
        pids = [int(k.value("__import__('os').getpid()")) for k in kernels]
        assert len(set(pids)) == 3
        for i, k in enumerate(kernels):
            k.execute(f"n = {i}")
        kernels[0].shutdown()
        assert [k.value("n") for k in kernels[1:]] == ["1", "2"]
    finally:
        for k in kernels:
            k.shutdown()
    assert not wait_remote_clean(ssh_host)


def test_hard_restart_kills_the_proxy_and_still_ends_the_old_kernel(kernel, ssh_host):
    """restart_kernel(now=True) SIGKILLs the proxy group; the new proxy reuses the same ports."""
    k = kernel("--python", ssh_host.env_prefix)
    old_pid = int(k.value("__import__('os').getpid()"))
    k.km.restart_kernel(now=True)
    try:
        k.kc.wait_for_ready(timeout=60)
    except RuntimeError as e:  # the new proxy died: its log says why
        raise AssertionError(f"{e} (exit code {k.proxy.poll()})\n--- proxy log ---\n{k.log()}") from e
    assert int(k.value("__import__('os').getpid()")) != old_pid
    deadline = time.monotonic() + 15
    while ssh_host.run(f"kill -0 {old_pid}").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert ssh_host.run(f"kill -0 {old_pid}").returncode != 0, "old kernel survived a hard restart"


def test_notebook_path_reaches_the_remote_kernel(ssh_host, tmp_path):
    """Jupyter sets JPY_SESSION_NAME for the kernel; ipykernel shows it as __session__."""
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix)
    k = Kernel(prefix, "ssh_btest", tmp_path / "proxy.log")
    log = open(k.log_path, "ab")
    try:
        k.km.start_kernel(env=dict(os.environ, JPY_SESSION_NAME="/home/u/work/analysis.ipynb"),
                          stdout=log, stderr=log)
        k.wait_ready()
        assert k.value("__session__") == "/home/u/work/analysis.ipynb"
    finally:
        k.shutdown()
        log.close()


@pytest.mark.parametrize("how", ["no IdentityFile", "IdentitiesOnly with a passphrase"])
def test_the_key_can_come_from_an_agent(kernel, ssh_host, tmp_path, monkeypatch, how):
    """The login needs the key loaded in ssh-agent (SSH_AUTH_SOCK): either there is no usable
    IdentityFile, or the IdentityFile (IdentitiesOnly yes) has a passphrase, as users' keys do,
    and no .pub file beside it (the agent also holds an unauthorised key, listed first)."""
    block = ssh_host.ssh_config.read_text().split(f"Host {ssh_host.alias}\n", 1)[1].split("\nHost ", 1)[0]
    identity = next(line.split(None, 1)[1].strip('"') for line in block.splitlines()
                    if line.strip().startswith("IdentityFile"))
    kept = [line for line in block.splitlines() if line.strip() and not line.strip().startswith(("IdentityFile",
                                                                                                  "IdentitiesOnly"))]
    if how == "no IdentityFile":
        # A missing IdentityFile, so that neither client falls back to ~/.ssh/id_* of whoever runs this.
        ids = f"  IdentityFile {tmp_path}/none\n  IdentitiesOnly no\n"
        to_add = [Path(identity)]
    else:
        key = passphrase_copy(Path(identity), tmp_path / "id_locked")
        decoy = tmp_path / "id_decoy"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(decoy)], check=True,
                       capture_output=True, timeout=30)
        ids = f'  IdentityFile "{key}"\n  IdentitiesOnly yes\n'
        to_add = [decoy, key]
    config = tmp_path / "ssh_config_agent"
    config.write_text("Host btest-agent\n" + "\n".join(kept) + "\n" + ids)
    config.chmod(0o600)
    with ssh_agent(tmp_path / "agent.sock", *to_add) as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)  # the proxy inherits it
        k = kernel("--host", "btest-agent", "--ssh-config", str(config), "--python", ssh_host.env_prefix,
                   name="ssh_btest-agent")
        assert k.value("6 * 7") == "42"
        k.shutdown()
