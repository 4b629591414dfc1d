"""manage as a new user meets it: add/list/show/check/remove, any remote kernel, a jump host,
the remote environment options, and what check says about every wrong input."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernels import Kernel, cut, local_ssh_children, manage, wait_for, wait_remote_clean

DATA = Path(__file__).parent / "data"
STEP_NAMES = ("resolve", "connect", "authenticate", "remote python", "packages", "connection file",
              "kernel command", "kernel start", "execute", "shutdown")


def run_manage(*args: str, offline: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "ssh_ipykernel.manage", *args]
    if offline:  # an empty network namespace: name lookups fail without leaving the machine
        argv = ["unshare", "--net", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def step_line(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line[7:].startswith(name + " "))


#: Logos of the remote "echo" kernelspec (any bytes do: they are copied, not decoded).
LOGOS = {"logo-32x32.png": b"\x89PNG\r\n\x1a\n echo 32", "logo-64x64.png": b"\x89PNG\r\n\x1a\n echo 64",
         "logo-svg.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>"}


@pytest.fixture
def echo_kernelspec(ssh_host):
    """A non-Python kernelspec ("echo", language echo, interrupt_mode message, with logos) on the remote."""
    where = ".local/share/jupyter/kernels/echo"
    files = {name: (DATA / "echo_kernel" / name).read_bytes() for name in ("kernel.json", "echo_kernel.py")}
    for name, data in {**files, **LOGOS}.items():
        r = subprocess.run(ssh_host.ssh_argv(f"mkdir -p {where} && cat > {where}/{name}", options=["-o", "BatchMode=yes"]),
                           input=data, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
    yield "echo"
    ssh_host.run(f"rm -rf {where}")


def test_add_list_show_check_remove(ssh_host, tmp_path, nothing_left):
    prefix = str(tmp_path / "prefix")
    common = ["--ssh-config", str(ssh_host.ssh_config), "--prefix", prefix]
    r = run_manage("--host", ssh_host.alias, "--python", ssh_host.env_prefix, "--check", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All 10 checks passed" in r.stdout and "Installed kernelspec ssh_btest (SSH btest)" in r.stdout

    r = run_manage("list", "--prefix", prefix)
    assert r.returncode == 0
    row = r.stdout.splitlines()[1].split()
    assert row[:5] == ["ssh_btest", "SSH", "btest", "btest", "ipykernel"] and ssh_host.env_prefix in row

    r = run_manage("show", "ssh_btest", "--prefix", prefix)
    assert f"remote python:  {ssh_host.env_prefix}" in r.stdout and "host:           btest" in r.stdout

    r = run_manage("check", "ssh_btest", "--prefix", prefix)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in STEP_NAMES:
        line = step_line(r.stdout, name)
        assert line.startswith("  ok") and line.split()[-1] != "", line
    assert f"printed '{ssh_host.hostname}'" in step_line(r.stdout, "execute")
    assert " s  " in step_line(r.stdout, "kernel start")  # a timing per step

    r = run_manage("remove", "ssh_btest", "--prefix", prefix)
    assert r.returncode == 0 and "Removed kernelspec ssh_btest" in r.stdout
    assert "No SSH kernelspecs" in run_manage("list", "--prefix", prefix).stdout


CASES = {
    # name: (arguments after --host, offline, exit code, failing step, words the message must hold)
    "typo in the host alias": (["btset"], True, 21, "resolve", ["cannot resolve", "add a Host entry"]),
    "name does not resolve": (["nosuchhost.invalid"], True, 21, "resolve", ["cannot resolve", "check the spelling"]),
    "connection refused": (["{refused}"], False, 22, "connect", ["refused the connection", "sshd"]),
    "authentication refused": (["{badkey}"], False, 25, "authenticate", ["refused authentication", "authorized_keys"]),
    "changed host key": (["{changedkey}"], False, 24, "authenticate", ["has CHANGED", "ssh-keygen", "never bypasses"]),
    "unknown host key": (["{unknownkey}"], False, 24, "authenticate",
                         ["not in known_hosts", "ssh -F {config} {unknownkey}", "answer yes"]),
    "python missing": (["btest", "--python", "/opt/no/such/env"], False, 31, "remote python",
                       ["remote python /opt/no/such/env not found on btest", "environment prefix"]),
    "ipykernel missing": (["btest", "--python", "{no_ipykernel}"], False, 33, "packages", ["pip install ipykernel"]),
    "pre-command fails": (["btest", "--pre-command", ". /opt/no/activate"], False, 37, "remote python",
                          ["--pre-command failed on btest", "ssh btest '. /opt/no/activate'", "/opt/no/activate"]),
    "workdir missing": (["btest", "--workdir", "~/no/such/dir"], False, 39, "kernel command",
                        ["/home/sikuser/no/such/dir does not exist", "mkdir -p"]),
    "remote kernelspec missing": (["btest", "--remote-kernel", "ir"], False, 38, "kernel command",
                                  ["no kernelspec 'ir'", "installed there: python3", "jupyter kernelspec list"]),
    "kernel program missing": (["btest", "--kernel-cmd", "julia -i {{connection_file}}"], False, 35, "kernel command",
                               ["program julia is not found"]),
    # The first seven steps pass; the proxy (started by jupyter_client) ends with its own error,
    # which check reads from the proxy's state file.
    "kernel dies at once": (["btest", "--kernel-cmd", "sh -c 'exit 3' {{connection_file}}"], False, 1, "kernel start",
                            ["the remote kernel died (exit code 3); exiting so that Jupyter restarts it"]),
    "runtime dir read-only": (["btest", "--pre-command", "export JUPYTER_RUNTIME_DIR={env}/runtime"], False, 34,
                              "connection file", ["could not write the kernel's connection file", "Read-only file system"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_answers_each_wrong_input(ssh_host, case, nothing_left, jupyter_env):
    args, offline, code, step, words = CASES[case]
    fill = {"config": ssh_host.ssh_config, "no_ipykernel": ssh_host.python_without_ipykernel,
            "env": ssh_host.env_prefix, **ssh_host.aliases}
    args = [a.format(**fill) for a in args]
    r = run_manage("check", "--ssh-config", str(ssh_host.ssh_config), "--host", *args, offline=offline)
    assert r.returncode == code, r.stdout + r.stderr
    assert step_line(r.stdout, step).startswith("  FAIL"), r.stdout
    text = " ".join(r.stdout.split())  # the message is wrapped for the terminal
    for word in words:
        assert " ".join(word.format(**fill).split()) in text, (word, r.stdout)
    assert f"failed at \"{step}\" (exit code {code})" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    # A proxy that failed for check leaves no state file: check took its error from it (not
    # "the proxy exited with code N", what check says of a proxy that left no error).
    assert "the proxy exited with code" not in r.stdout
    assert not list((jupyter_env.runtime / "ssh_ipykernel").glob("proxy-*.json"))


def test_remote_connection_file_permission_denied(ssh_host, nothing_left):
    ssh_host.run(f"mkdir -p {ssh_host.runtime_dir} && chmod 500 {ssh_host.runtime_dir}")
    try:
        r = run_manage("check", "--ssh-config", str(ssh_host.ssh_config), "--host", ssh_host.alias)
    finally:
        ssh_host.run(f"chmod 700 {ssh_host.runtime_dir}")
    assert r.returncode == 34, r.stdout
    assert step_line(r.stdout, "connection file").startswith("  FAIL")
    assert "Permission denied" in r.stdout and "JUPYTER_RUNTIME_DIR" in r.stdout


@pytest.fixture(scope="module")
def jump_host(host_factory, ssh_host):
    """jtest: reachable only through btest (ProxyJump)."""
    with host_factory.create_host("jtest", reachable_from=ssh_host) as host:
        yield host


@pytest.mark.both_transports
def test_kernel_through_a_jump_host(jump_host, tmp_path, jupyter_env):
    prefix = tmp_path / "prefix"
    manage(jump_host, prefix, "--host", jump_host.alias, "--python", jump_host.env_prefix)
    k = Kernel(prefix, "ssh_jtest", tmp_path / "proxy.log")
    try:
        k.start()
        assert k.value("__import__('socket').gethostname()") == jump_host.hostname
    finally:
        k.shutdown()
    assert not wait_remote_clean(jump_host)
    r = run_manage("check", "ssh_jtest", "--prefix", str(prefix))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reached through ProxyJump btest" in step_line(r.stdout, "resolve")
    assert step_line(r.stdout, "connect").startswith("  --")  # not routable from here: tested by the login
    assert f"printed '{jump_host.hostname}'" in r.stdout
    assert not wait_remote_clean(jump_host)
    assert not local_ssh_children(str(jupyter_env.runtime))


def test_without_an_ssh_client_auto_uses_paramiko(ssh_host, tmp_path, monkeypatch, jupyter_env):
    """As on a Windows machine or a minimal container: no ssh anywhere on the proxy's PATH."""
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix)
    empty = tmp_path / "bin"
    empty.mkdir()
    k = Kernel(prefix, "ssh_btest", tmp_path / "proxy.log")
    try:
        with monkeypatch.context() as m:
            m.setenv("PATH", str(empty))  # the proxy inherits it from the KernelManager
            k.start()
        assert "with paramiko" in k.log()
        k.execute("kept = 6 * 7")
        with cut(ssh_host):  # and reconnecting needs no ssh either
            time.sleep(10)
        assert k.value("kept", timeout=30) == "42"
        # The proxy logs "up" once all five forwards are open; the client may be answered
        # through the first ones a moment before that.
        wait_for(k.log_path, "up: reconnected", timeout=10)
        assert not local_ssh_children(str(jupyter_env.runtime))
    finally:
        k.shutdown()
    assert not wait_remote_clean(ssh_host)


def test_a_non_python_remote_kernelspec(ssh_host, echo_kernelspec, tmp_path, nothing_left):
    prefix = tmp_path / "prefix"
    r = manage(ssh_host, prefix, "--host", ssh_host.alias, "--remote-kernel", "echo", "--workdir", "/tmp")
    assert "Installed kernelspec ssh_btest_echo (SSH btest (Echo))" in r.stdout
    spec = json.loads((prefix / "share/jupyter/kernels/ssh_btest_echo/kernel.json").read_text())
    assert (spec["language"], spec["interrupt_mode"], spec["metadata"]["debugger"]) == ("echo", "message", False)
    k = Kernel(prefix, "ssh_btest_echo", tmp_path / "proxy.log")
    try:
        k.start()
        assert k.kc.kernel_info(reply=True, timeout=10)["content"]["language_info"]["name"] == "echo"
        content, out, _ = k.execute("hello from the echo kernel")
        assert content["status"] == "ok" and out == "hello from the echo kernel"
        assert k.execute("$ECHO_HOME")[1] == f"{ssh_host.home}/echo-home"  # ${HOME} in its env, remote side
        assert k.execute("!cwd")[1] == "/tmp"

        # interrupt_mode "message": KernelManager sends an interrupt_request on the control
        # channel, through the tunnel, instead of signalling the proxy.
        pid = ssh_host.remote_pids("echo_kernel.py")
        msg_id = k.kc.execute("!sleep 60")
        k.wait_busy(msg_id)
        assert k.interrupt_cell(msg_id) < 5
        assert ssh_host.remote_pids("echo_kernel.py") == pid  # the same kernel
        assert k.execute("still here")[1] == "still here"
        assert "interrupt" not in k.log().lower(), "the proxy was signalled instead"
    finally:
        k.shutdown()
    assert not ssh_host.remote_pids("echo_kernel.py")
    for name, data in LOGOS.items():  # add --remote-kernel copied the remote logos
        assert (prefix / "share/jupyter/kernels/ssh_btest_echo" / name).read_bytes() == data, name


def test_pre_command_and_workdir_reach_the_kernel(ssh_host, tmp_path, nothing_left):
    ssh_host.run("mkdir -p ~/'work dir'")
    prefix = tmp_path / "prefix"
    pre = """export SIK_PRE="pre 'q' $HOME"; cd /"""
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--pre-command", pre, "--workdir", "~/work dir")
    argv = json.loads((prefix / "share/jupyter/kernels/ssh_btest/kernel.json").read_text())["argv"]
    assert ["--pre-command", pre] == argv[argv.index("--pre-command"):argv.index("--pre-command") + 2]
    assert "--workdir=~/work dir" in argv
    k = Kernel(prefix, "ssh_btest", tmp_path / "proxy.log")
    try:
        k.start()
        assert k.value("__import__('os').environ['SIK_PRE']") == f"pre 'q' {ssh_host.home}"
        assert k.value("__import__('os').getcwd()") == f"{ssh_host.home}/work dir"
    finally:
        k.shutdown()
        ssh_host.run("rm -rf ~/'work dir'")


def test_explicit_kernel_command(ssh_host, tmp_path, nothing_left):
    prefix = tmp_path / "prefix"
    cmd = f"{shlex.quote(ssh_host.env_python)} -O -m ipykernel_launcher -f {{connection_file}}"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--kernel-cmd", cmd, "--name", "explicit")
    k = Kernel(prefix, "explicit", tmp_path / "proxy.log")
    try:
        k.start()
        assert k.value("__import__('sys').flags.optimize") == "1"  # our -O: the command we gave ran
        assert k.value("__import__('socket').gethostname()") == ssh_host.hostname
    finally:
        k.shutdown()


def test_check_of_a_kernelspec_whose_local_python_is_gone(ssh_host, tmp_path, nothing_left):
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias)
    path = prefix / "share/jupyter/kernels/ssh_btest/kernel.json"
    spec = json.loads(path.read_text())
    spec["argv"][0] = "/opt/removed-venv/bin/python"
    path.write_text(json.dumps(spec))
    r = run_manage("check", "ssh_btest", "--prefix", str(prefix))
    assert r.returncode == 2, r.stdout + r.stderr
    assert step_line(r.stdout, "kernel start").startswith("  FAIL")
    assert "/opt/removed-venv/bin/python" in r.stdout and "manage add" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("args, code", [
    (["--python", "/opt/no/such/env"], 31),
    (["--pre-command", "false"], 37),
])
def test_add_with_check_writes_nothing_when_the_check_fails(ssh_host, tmp_path, nothing_left, args, code):
    prefix = tmp_path / "prefix"
    r = run_manage("--host", ssh_host.alias, *args, "--check", "--ssh-config", str(ssh_host.ssh_config),
                   "--prefix", str(prefix), "--name", "never")
    assert r.returncode == code, r.stdout + r.stderr
    assert "Installed kernelspec" not in r.stdout
    written = [str(p) for p in prefix.rglob("*")] if prefix.exists() else []
    assert not [p for p in written if "never" in p or p.endswith("kernel.json")], written
    assert "No SSH kernelspecs" in run_manage("list", "--prefix", str(prefix)).stdout
