"""Coming from ssh_ipykernel 1.x: its kernelspecs, command lines and add_kernel keep working, and
manage upgrade rewrites its kernelspecs -- on the netns test host, through a real KernelManager.

1.x kernelspecs have no --ssh-config: 1.x users put the host in ~/.ssh/config. The tests never
touch the real ~/.ssh, so the ``v1_user`` fixture puts an ``ssh`` first on PATH that reads the test
host's config file, as ~/.ssh/config would be read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from jupyter_client import KernelManager

from kernels import Kernel, wait_remote_clean

MANAGE = [sys.executable, "-m", "ssh_ipykernel.manage"]
ENV_PROBE = "sorted((k, v) for k, v in __import__('os').environ.items() if k.startswith('VAR') or 'VAR2=' in v)"


@pytest.fixture
def v1_user(ssh_host, tmp_path, monkeypatch):
    """PATH with an ``ssh`` that reads the test host's config (for kernelspecs without --ssh-config)."""
    real = shutil.which("ssh")
    if real is None:
        pytest.skip("needs the OpenSSH client")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {real} -F {ssh_host.ssh_config} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return ssh_host


def sudo_ok(host) -> bool:
    return host.run("sudo -n true").returncode == 0


def write_v1_kernelspec(prefix: Path, host, *, sudo: bool, name: str = "ssh__sshbtestdemoabc") -> Path:
    """kernel.json byte for byte as ssh_ipykernel 1.2.3's add_kernel wrote it (json.dump with
    sort_keys and indent=2; --env and -s before -f), and a logo beside it."""
    argv = [sys.executable, "-m", "ssh_ipykernel", "--host", host.alias, "--python", host.env_prefix,
            "--timeout", "10", "--env", "VAR1=demo VAR2=abc", "-f", "{connection_file}"]
    if sudo:
        argv.insert(-2, "-s")
    path = prefix / "share" / "jupyter" / "kernels" / name
    path.mkdir(parents=True)
    with open(path / "kernel.json", "w") as fd:
        json.dump({"argv": argv, "display_name": "SSH btest:demo(abc)", "language": "python"}, fd, sort_keys=True,
                  indent=2)
    (path / "logo-64x64.png").write_bytes(b"\x89PNG logo")
    return path


def run_kernel(prefix: Optional[Path], name: str, log: Path, host, *, root: bool = False) -> str:
    """Start kernelspec ``name`` with a KernelManager (prefix None: Jupyter's own kernelspec
    path, where a user's kernelspecs are); return the log. Asserts the remote kernel sees
    VAR1=demo and VAR2=abc, and nothing else of the words (no VAR1='demo VAR2=abc')."""
    k = Kernel(prefix or Path("/nonexistent"), name, log)
    if prefix is None:
        k.km = KernelManager(kernel_name=name)
    try:
        k.start()
        assert k.value(ENV_PROBE) == "[('VAR1', 'demo'), ('VAR2', 'abc')]"
        assert k.value("__import__('socket').gethostname()") == host.hostname
        if root:
            assert k.value("__import__('os').geteuid()") == "0"
    finally:
        k.shutdown()
    assert not wait_remote_clean(host, timeout=15)
    return k.log()


def manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MANAGE, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_1x_kernelspec_runs_with_the_env_1x_gave_it(v1_user, tmp_path):
    sudo = sudo_ok(v1_user)
    write_v1_kernelspec(tmp_path, v1_user, sudo=sudo)
    log = run_kernel(tmp_path, "ssh__sshbtestdemoabc", tmp_path / "proxy.log", v1_user, root=sudo)
    # how the one --env argument was read, in the Jupyter log, with how to write the other meaning
    line = next(line for line in log.splitlines() if "--env VAR1=... holds whitespace" in line)
    assert "read as shell words (ssh_ipykernel 1.x's form" in line and "2 variables, VAR1, VAR2" in line
    assert "--env \"VAR1='...'\"" in line and "demo" not in line  # names, never values


def test_the_1x_manage_command_lines(v1_user, tmp_path, jupyter_env):
    """The 1.x README's command as written (but for the remote python), into the user's
    kernelspecs (a private JUPYTER_DATA_DIR); then the same with 1.x's short options."""
    r = manage("--display-name", "SSH btest:demo(abc)", "--host", v1_user.alias, "--python", v1_user.env_prefix,
               "--env", "VAR1=demo VAR2=abc")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Installed kernelspec ssh_btest (SSH btest:demo(abc))" in r.stdout
    assert (jupyter_env.data / "kernels" / "ssh_btest" / "kernel.json").is_file()
    run_kernel(None, "ssh_btest", tmp_path / "long.log", v1_user)

    prefix = str(tmp_path / "short")
    r = manage("-H", v1_user.alias, "-p", v1_user.env_prefix, "-d", "SSH btest:demo(abc)", "-e", "VAR1=demo", "VAR2=abc",
               "-t", "10", "--prefix", prefix)
    assert r.returncode == 0, r.stdout + r.stderr
    argv = json.loads((Path(prefix) / "share/jupyter/kernels/ssh_btest/kernel.json").read_text())["argv"]
    assert argv[3:] == ["--host", v1_user.alias, "--python", v1_user.env_prefix, "--timeout", "10", "--env", "VAR1=demo",
                        "--env", "VAR2=abc", "-f", "{connection_file}"]
    run_kernel(Path(prefix), "ssh_btest", tmp_path / "short.log", v1_user)


def test_add_kernel_with_1x_arguments(v1_user, tmp_path, jupyter_env):
    """The 1.x README's Python example as written but for this machine's pythons, as a 1.x
    script runs it: into the user's kernelspecs (a private JUPYTER_DATA_DIR)."""
    import ssh_ipykernel.manage

    name = ssh_ipykernel.manage.add_kernel(
        host=v1_user.alias,
        display_name="SSH btest:demo(abc)",
        local_python_path=sys.executable,
        remote_python_path=v1_user.env_prefix,
        sudo=False,
        env="VAR1=demo VAR2=abc",
        timeout=10
    )
    assert name == "ssh__sshbtestdemoabc" and name.directory == str(jupyter_env.data / "kernels" / name)
    run_kernel(None, name, tmp_path / "proxy.log", v1_user)


def test_upgrade_of_a_1x_kernelspec(v1_user, tmp_path):
    sudo = sudo_ok(v1_user)
    path = write_v1_kernelspec(tmp_path, v1_user, sudo=sudo)
    before = (path / "kernel.json").read_bytes()
    r = manage("list", "--prefix", str(tmp_path))
    assert "1.x (upgrade)" in r.stdout.splitlines()[1], r.stdout

    r = manage("upgrade", "ssh__sshbtestdemoabc", "--dry-run", "--prefix", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "old argv:" in r.stdout and "new argv:" in r.stdout and "Nothing written (--dry-run)." in r.stdout
    assert (path / "kernel.json").read_bytes() == before

    r = manage("upgrade", "--all", "--prefix", str(tmp_path))
    assert r.returncode == 0 and "Upgraded ssh__sshbtestdemoabc (1.x form)" in r.stdout, r.stdout + r.stderr
    spec = json.loads((path / "kernel.json").read_text())
    expected = ["--host", v1_user.alias, "--python", v1_user.env_prefix, "--timeout", "10", "--env", "VAR1=demo",
                "--env", "VAR2=abc", *(["--sudo"] if sudo else []), "-f", "{connection_file}"]
    assert spec["argv"] == [sys.executable, "-m", "ssh_ipykernel", *expected]
    assert (spec["display_name"], spec["language"]) == ("SSH btest:demo(abc)", "python")
    assert (path / "logo-64x64.png").read_bytes() == b"\x89PNG logo"
    assert "current" in manage("list", "--prefix", str(tmp_path)).stdout.splitlines()[1]
    r = manage("upgrade", "ssh__sshbtestdemoabc", "--prefix", str(tmp_path))
    assert "in today's form already: nothing to do" in r.stdout

    log = run_kernel(tmp_path, "ssh__sshbtestdemoabc", tmp_path / "proxy.log", v1_user, root=sudo)
    assert "shell words" not in log  # nothing left to read two ways


def test_check_kernel_of_a_1x_kernelspec(v1_user, tmp_path, capsys):
    """The Python API's check: data, nothing printed."""
    import ssh_ipykernel.manage

    write_v1_kernelspec(tmp_path, v1_user, sudo=False)
    result = ssh_ipykernel.manage.check_kernel("ssh__sshbtestdemoabc", prefix=str(tmp_path))
    assert (result["ok"], result["exit_code"], result["host"]) == (True, 0, v1_user.alias), result
    assert [s["name"] for s in result["steps"]][-3:] == ["kernel start", "execute", "shutdown"]
    assert all(s["ok"] for s in result["steps"]) and capsys.readouterr().out == ""
    assert not wait_remote_clean(v1_user, timeout=15)


def test_shell_words_are_split_never_run(ssh_host, tmp_path):
    """1.x ran its --env through the remote shell; its words are now split like a shell splits
    them, and nothing in them is expanded or run, here or there."""
    marker = "/tmp/sik-v1-env-marker"
    ssh_host.run(f"rm -f {marker}")
    words = f"""A='$(touch {marker})' B="`touch {marker}`;x" C=\\$HOME D='a b'"""
    r = manage("--host", ssh_host.alias, "--ssh-config", str(ssh_host.ssh_config), "--python", ssh_host.env_prefix,
               "--env", words, "--prefix", str(tmp_path))
    assert r.returncode == 0 and "read as shell words" in r.stdout, r.stdout + r.stderr
    k = Kernel(tmp_path, "ssh_btest", tmp_path / "proxy.log")
    try:
        k.start()
        got = k.value("[__import__('os').environ[v] for v in 'ABCD']")
        assert got == repr([f"$(touch {marker})", f"`touch {marker}`;x", "$HOME", "a b"])
    finally:
        k.shutdown()
    assert ssh_host.run(f"test -e {marker}").returncode != 0 and not os.path.exists(marker)
