import json
import sys

import pytest
from click.testing import CliRunner
from jupyter_client.kernelspec import KernelSpecManager

from ssh_ipykernel.exceptions import UsageError
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.kernelspec import (
    KernelSpecOptions,
    build_kernelspec,
    check_kernel_name,
    default_kernel_name,
)
from ssh_ipykernel.manage import add_command
from ssh_ipykernel.options import ConnectionOptions, ProxyOptions, parse_env, parse_grace


@pytest.mark.parametrize(
    "host, name",
    [("btest", "ssh_btest"), ("alice@Login.Example.org:2222", "ssh_alice_login.example.org_2222"),
     ("ssh://u@h", "ssh_ssh_u_h"), ("[::1]:22", "ssh_1_22")],
)
def test_default_names_are_valid(host, name):
    assert default_kernel_name(host) == name
    assert check_kernel_name(name) == name


@pytest.mark.parametrize("display_name, name", [
    # what 1.2.3's add_kernel computes ("ssh_" + "_" + the safe characters), lowercased as
    # jupyter_client installs it; 1.x's README shows ssh__ssh_btest_demo_abc_, from an older version
    ("SSH btest:demo(abc)", "ssh__sshbtestdemoabc"), ("gpu-1.x_y", "ssh__gpu-1.x_y"), ("Ünï cödé", "ssh__ncd"),
])
def test_1x_kernel_names(display_name, name):
    from ssh_ipykernel.kernelspec import v1_kernel_name

    assert v1_kernel_name(display_name) == name == check_kernel_name(name)


def test_invalid_name_is_refused_with_a_suggestion():
    with pytest.raises(UsageError) as e:
        check_kernel_name("my kernel!")
    assert "ssh_my_kernel" in str(e.value)


def test_argv_replays_the_options_and_ends_with_the_connection_file():
    spec = build_kernelspec(
        KernelSpecOptions(ProxyOptions(ConnectionOptions(parse_host("btest"), ssh_config="/cfg", timeout=12.5),
                                       python="/opt/env", env={"A": "x y", "B": "'q'"}, sudo=True)),
        python_executable="/usr/bin/python3",
    )
    assert spec["argv"] == [
        "/usr/bin/python3", "-m", "ssh_ipykernel", "--host", "btest", "--python", "/opt/env",
        "--ssh-config", "/cfg", "--timeout", "12.5", "--env", "A=x y", "--env", "B='q'", "--sudo",
        "-f", "{connection_file}",
    ]
    assert spec["display_name"] == "SSH btest"
    assert spec["interrupt_mode"] == "signal"
    assert spec["language"] == "python"


def test_parse_env_keeps_values_exactly():
    assert parse_env(["A=", "B=x=y", "C= spaced 'q' \"d\" $(x) "]) == {
        "A": "", "B": "x=y", "C": " spaced 'q' \"d\" $(x) "}
    for bad in ["NOEQUALS", "1A=x", "A B=x", "=x"]:
        with pytest.raises(UsageError):
            parse_env([bad])


def test_manage_installs_a_kernelspec_jupyter_finds(tmp_path):
    result = CliRunner().invoke(
        add_command,
        ["--host", "btest", "--python", "/remote/env", "--env", "X=1 2", "--prefix", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert "Installed kernelspec ssh_btest (SSH btest)" in result.output
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "share" / "jupyter" / "kernels")])
    spec = ksm.get_kernel_spec("ssh_btest")
    assert spec.display_name == "SSH btest"
    assert spec.argv[0] == sys.executable
    assert spec.argv[1:] == ["-m", "ssh_ipykernel", "--host", "btest", "--python", "/remote/env",
                             "--env", "X=1 2", "-f", "{connection_file}"]
    assert spec.interrupt_mode == "signal"


def test_manage_custom_name_and_display_name(tmp_path):
    result = CliRunner().invoke(
        add_command,
        ["--host", "u@h:2200", "--name", "gpu", "--display-name", "GPU box", "--prefix", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "share/jupyter/kernels/gpu/kernel.json").read_text())
    assert data["display_name"] == "GPU box"
    assert data["argv"][3:5] == ["--host", "u@h:2200"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--host", "-oProxyCommand=x"], "not a host name"),
        (["--host", "btest", "--name", "bad name"], "not a valid kernelspec name"),
        (["--host", "btest", "--env", "1X=2"], "VAR=VALUE"),
        (["--host", "btest", "--ssh-config", "/no/such/file"], "no such file"),
        (["--host", "btest", "--python", "/a\nb"], "control characters"),
        (["--host", "btest", "--grace", "soon"], "not a duration"),
    ],
)
def test_manage_bad_input_writes_nothing(tmp_path, args, words):
    result = CliRunner().invoke(add_command, args + ["--prefix", str(tmp_path)])
    assert result.exit_code == 2
    assert words in result.output
    assert not (tmp_path / "share").exists()



@pytest.mark.parametrize("value, seconds", [
    ("600", 600.0), ("10m", 600.0), ("1.5h", 5400.0), ("2d", 172800.0), ("0", 0.0), (" 30S ", 30.0),
    ("never", None), ("Forever", None), ("inf", None),
])
def test_grace_durations(value, seconds):
    assert parse_grace(value) == seconds


@pytest.mark.parametrize("value", ["", "-5", "10 minutes", "1e3", "m", "5;rm -rf /"])
def test_bad_grace_is_refused_with_the_accepted_forms(value):
    with pytest.raises(UsageError) as e:
        parse_grace(value)
    assert "30m" in str(e.value) and "never" in str(e.value)


def test_grace_is_recorded_in_the_kernelspec_only_when_given(tmp_path):
    CliRunner().invoke(add_command, ["--host", "btest", "--prefix", str(tmp_path), "--grace", "never"])
    spec = json.loads((tmp_path / "share/jupyter/kernels/ssh_btest/kernel.json").read_text())
    assert spec["argv"][-4:] == ["--grace", "never", "-f", "{connection_file}"]
    CliRunner().invoke(add_command, ["--host", "other", "--prefix", str(tmp_path)])
    spec = json.loads((tmp_path / "share/jupyter/kernels/ssh_other/kernel.json").read_text())
    assert "--grace" not in spec["argv"]


def test_persist_is_recorded_in_the_kernelspec_only_when_given(tmp_path):
    result = CliRunner().invoke(add_command, ["--host", "btest", "--prefix", str(tmp_path), "--persist", "600"])
    assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "share/jupyter/kernels/ssh_btest/kernel.json").read_text())
    assert spec["argv"][spec["argv"].index("--persist") + 1] == "600"
    assert spec["metadata"]["ssh_ipykernel"]["persist"] == 600
    CliRunner().invoke(add_command, ["--host", "other", "--prefix", str(tmp_path)])
    spec = json.loads((tmp_path / "share/jupyter/kernels/ssh_other/kernel.json").read_text())
    assert "--persist" not in spec["argv"]
    result = CliRunner().invoke(add_command, ["--host", "third", "--prefix", str(tmp_path), "--persist", "0"])
    assert result.exit_code != 0 and "--persist" in result.output


def test_transport_is_recorded_in_the_kernelspec_only_when_given(tmp_path):
    result = CliRunner().invoke(add_command, ["--host", "btest", "--prefix", str(tmp_path), "--transport", "paramiko"])
    assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "share/jupyter/kernels/ssh_btest/kernel.json").read_text())
    assert spec["argv"][spec["argv"].index("--transport") + 1] == "paramiko"
    assert spec["metadata"]["ssh_ipykernel"]["transport"] == "paramiko"
    CliRunner().invoke(add_command, ["--host", "other", "--prefix", str(tmp_path)])
    spec = json.loads((tmp_path / "share/jupyter/kernels/ssh_other/kernel.json").read_text())
    assert "--transport" not in spec["argv"]
    result = CliRunner().invoke(add_command, ["--host", "third", "--prefix", str(tmp_path), "--transport", "putty"])
    assert result.exit_code != 0 and "--transport" in result.output
