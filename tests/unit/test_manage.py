"""manage's subcommands as a user types them (no SSH needed): help, add, list, show, remove."""
import json
import sys

import pytest
from click.testing import CliRunner

from ssh_ipykernel.cli import main as console_main
from ssh_ipykernel.manage import manage

COMMANDS = ["add", "list", "show", "remove", "check", "upgrade"]


@pytest.fixture(autouse=True)
def private_jupyter(tmp_path, monkeypatch):
    """Only kernelspecs this test writes are visible."""
    for var in ("JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter_path"))


def invoke(*args, cli=manage):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def add(prefix, *args):
    r = invoke("--prefix", str(prefix), *args)
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_every_command_has_help(command):
    r = invoke(*command, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output
    if not command:
        assert all(c in r.output for c in COMMANDS) and "--host btest --python" in r.output


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and "ssh_ipykernel, version" in r.output


def test_console_script_groups_everything():
    r = invoke("--help", cli=console_main)
    for command in ["kernel", "status", *COMMANDS]:
        assert command in r.output
    assert invoke("status", "--help", cli=console_main).exit_code == 0


def test_adding_again_says_it_replaced(tmp_path):
    add(tmp_path, "--host", "btest")
    r = add(tmp_path, "--host", "btest", "--python", "/other/env")
    assert "Replaced kernelspec ssh_btest (SSH btest)" in r.output


def test_add_stays_the_default_subcommand(tmp_path):
    r = invoke("--host", "btest", "--python", "/remote/env", "--prefix", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "Installed kernelspec ssh_btest (SSH btest)" in r.output
    assert invoke("lst").exit_code == 2  # a mistyped subcommand is not taken for add


def test_list_show_remove_cycle(tmp_path):
    prefix = tmp_path / "prefix"
    add(prefix, "--host", "btest", "--python", "~/envs/py3", "--env", "A=x 'y'", "--workdir", "~/work",
        "--pre-command", 'source "$HOME/conda/bin/activate" py311', "--sudo")
    add(prefix, "--host", "gpu@h:2200", "--name", "gpu", "--display-name", "GPU box",
        "--kernel-cmd", "julia -i /opt/ijulia/kernel.jl {connection_file}", "--language", "julia")
    # A kernelspec that is not ours is never listed nor removed.
    other = prefix / "share" / "jupyter" / "kernels" / "plain"
    other.mkdir(parents=True)
    (other / "kernel.json").write_text(json.dumps({"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                   "display_name": "Plain", "language": "python"}))
    r = invoke("list", "--prefix", str(prefix))
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].split() == ["NAME", "DISPLAY", "NAME", "HOST", "REMOTE", "LOCATION", "FORM"]
    assert all(line.split()[-1] == "current" for line in lines[1:])
    assert [line.split()[0] for line in lines[1:]] == ["gpu", "ssh_btest"]
    assert "ipykernel with ~/envs/py3" in r.output and "command julia -i" in r.output
    assert "plain" not in r.output

    listed = json.loads(invoke("list", "--prefix", str(prefix), "--json").output)
    assert [s["name"] for s in listed] == ["gpu", "ssh_btest"]
    assert listed[1]["options"]["pre_command"] == 'source "$HOME/conda/bin/activate" py311'

    r = invoke("show", "ssh_btest", "--prefix", str(prefix))
    assert r.exit_code == 0
    assert "remote python:  ~/envs/py3" in r.output
    assert "workdir:        ~/work" in r.output
    assert "env:            A=x 'y'" in r.output
    assert "sudo:           yes" in r.output
    assert "--python=~/envs/py3" in r.output  # the argv Jupyter runs, ~ kept for the remote
    shown = json.loads(invoke("show", "gpu", "--json", "--prefix", str(prefix)).output)
    assert shown["language"] == "julia" and shown["kernel.json"]["metadata"]["debugger"] is False
    assert shown["options"]["kernel_cmd"] == "julia -i /opt/ijulia/kernel.jl {connection_file}"

    r = invoke("remove", "gpu", "--prefix", str(prefix))
    assert r.exit_code == 0 and "Removed kernelspec gpu (GPU box)" in r.output
    assert not (prefix / "share" / "jupyter" / "kernels" / "gpu").exists()
    assert [s["name"] for s in json.loads(invoke("list", "--prefix", str(prefix), "--json").output)] == ["ssh_btest"]


def test_remove_unknown_name_says_what_exists(tmp_path):
    add(tmp_path, "--host", "btest")
    r = invoke("remove", "ssh_nope", "--prefix", str(tmp_path))
    assert r.exit_code == 3
    assert "no kernelspec named 'ssh_nope'" in r.output and "ssh_btest" in r.output and "list" in r.output


def test_remove_refuses_other_kernelspecs(tmp_path):
    other = tmp_path / "share" / "jupyter" / "kernels" / "plain"
    other.mkdir(parents=True)
    (other / "kernel.json").write_text(json.dumps({"argv": ["x", "{connection_file}"], "display_name": "P", "language": "p"}))
    r = invoke("remove", "plain", "--prefix", str(tmp_path))
    assert r.exit_code == 3 and "not an SSH kernelspec" in r.output and "jupyter kernelspec" in r.output
    assert other.exists()


@pytest.mark.parametrize("args, code, words", [
    (["remove", "bad name!"], 2, "not a valid kernelspec name"),
    (["show", "../etc"], 2, "not a valid kernelspec name"),
    (["show", "ssh_none"], 3, "there are no SSH kernelspecs here"),
    (["check"], 2, "needs a kernelspec NAME"),
    (["check", "ssh_none"], 3, "no kernelspec named"),
    (["check", "x", "--host", "btest"], 2, "not both"),
    (["--host", "btest", "--kernel-cmd", "python -m ipykernel_launcher"], 2, "put {connection_file} where"),
    (["--host", "btest", "--kernel-cmd", "python 'unclosed {connection_file}"], 2, "No closing quotation"),
    (["--host", "btest", "--kernel-cmd", "x {connection_file}", "--remote-kernel", "ir"], 2, "exclude each other"),
    (["--host", "btest", "--remote-kernel", "ir kernel"], 2, "not a kernelspec name"),
    (["--host", "btest", "--workdir", "a\nb"], 2, "control characters"),
    (["--host", "btest", "--pre-command", "  "], 2, "--pre-command is empty"),
    (["--host", "btest;touch${IFS}x"], 2, "not a host name"),
])
def test_bad_input_is_answered_and_writes_nothing(tmp_path, args, code, words):
    r = invoke(*args, "--prefix", str(tmp_path))
    assert r.exit_code == code, r.output
    assert words in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "share").exists()


def test_kernelspec_argv_reads_back_to_the_same_options(tmp_path):
    """What add writes, the proxy parses back exactly (the source of truth for list/show/check)."""
    from ssh_ipykernel.specs import get_spec

    values = {"python": "~/env", "workdir": "~", "pre_command": "module load 'py 3' && export X=\"$Y\"",
              "kernel_cmd": "R --slave -e 'IRkernel::main()' --args {connection_file}"}
    add(tmp_path, "--host", "ssh://u@h:2", "--python", values["python"], "--workdir", values["workdir"],
        "--pre-command", values["pre_command"], "--kernel-cmd", values["kernel_cmd"], "--env", "E={x} 'q'")
    spec = get_spec("ssh_ssh_u_h_2", str(tmp_path))
    assert {k: spec.options[k] for k in values} == values
    assert spec.options["env"] == ("E={x} 'q'",)
    assert spec.spec["argv"][0] == sys.executable
    assert not any(a.startswith("~") for a in spec.spec["argv"]), "jupyter_client would expand ~ locally"


def test_1x_manage_command_line(tmp_path):
    """ssh_ipykernel 1.x's README command, with its short options: -H -p -d -e "A=1 B=2" -t."""
    r = invoke("-H", "btest", "-p", "/opt/env", "-d", "SSH btest:demo(abc)", "-e", "VAR1=demo VAR2=abc", "-t", "10",
               "--prefix", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "read as shell words (ssh_ipykernel 1.x's form" in r.output  # how -e was read, said once
    spec = json.loads((tmp_path / "share/jupyter/kernels/ssh_btest/kernel.json").read_text())
    assert spec["display_name"] == "SSH btest:demo(abc)"
    assert spec["argv"] == [sys.executable, "-m", "ssh_ipykernel", "--host", "btest", "--python", "/opt/env",
                            "--timeout", "10", "--env", "VAR1=demo", "--env", "VAR2=abc", "-f", "{connection_file}"]
    # several words after one -e, and -s for sudo
    r = invoke("-H", "btest", "-p", "/opt/env", "-s", "-e", "VAR1=demo", "VAR2=a b", "--name", "w",
               "--prefix", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "Note" not in r.output  # separate words: each read exactly
    argv = json.loads((tmp_path / "share/jupyter/kernels/w/kernel.json").read_text())["argv"]
    assert argv[7:] == ["--env", "VAR1=demo", "--env", "VAR2=a b", "--sudo", "-f", "{connection_file}"]


def test_a_value_that_would_read_as_shell_words_is_written_quoted(tmp_path):
    r = invoke("--host", "btest", "--env", "A='x B=y'", "--prefix", str(tmp_path))
    assert r.exit_code == 0, r.output
    from ssh_ipykernel.specs import get_spec

    spec = get_spec("ssh_btest", str(tmp_path))
    assert spec.proxy_options().env == {"A": "x B=y"}
    assert "--env" in spec.spec["argv"] and "A='x B=y'" in spec.spec["argv"]


def test_check_name_takes_its_own_timeout(tmp_path):
    """check NAME --timeout: check's own waits use it (the kernelspec's argv has the default).
    The host is a listener that accepts and never says a word, as a firewalled port can."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        add(tmp_path, "--host", f"127.0.0.1:{port}", "--name", "quiet")
        r = invoke("check", "quiet", "--prefix", str(tmp_path), "--timeout", "2")
    assert r.exit_code != 0, r.output
    assert "did not answer within 2 s" in r.output, r.output
