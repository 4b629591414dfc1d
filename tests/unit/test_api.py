"""The Python API (api.py, as ssh_ipykernel.manage re-exports it): 1.x's add_kernel, list, remove,
upgrade -- values and typed exceptions, nothing printed."""
import json
import os
import sys

import pytest
from click.testing import CliRunner

import ssh_ipykernel.manage
from ssh_ipykernel.exceptions import HostSpecError, KernelSpecNotFoundError, UsageError
from ssh_ipykernel.manage import manage
from ssh_ipykernel.options import ProxyOptions
from ssh_ipykernel.proxycli import parse_proxy_argv


@pytest.fixture(autouse=True)
def private_jupyter(tmp_path, monkeypatch):
    for var in ("JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter_path"))


def kernels_dir(prefix):
    return prefix / "share" / "jupyter" / "kernels"


def write_v1_kernelspec(prefix, name="ssh__sshbtestdemoabc", *, env="VAR1=demo VAR2=abc", sudo=False,
                        python=sys.executable, host="btest", remote="/opt/anaconda/envs/python36", timeout=10):
    """kernel.json byte for byte as ssh_ipykernel 1.2.3's add_kernel wrote it (json.dump, sort_keys,
    indent=2, env and -s before -f), and a logo beside it."""
    argv = [python, "-m", "ssh_ipykernel", "--host", host, "--python", remote, "--timeout", str(timeout),
            "-f", "{connection_file}"]
    if env is not None:
        argv[-2:-2] = ["--env", env]
    if sudo:
        argv.insert(-2, "-s")
    path = kernels_dir(prefix) / name
    path.mkdir(parents=True)
    with open(path / "kernel.json", "w") as fd:
        json.dump({"argv": argv, "display_name": "SSH btest:demo(abc)", "language": "python"}, fd, sort_keys=True,
                  indent=2)
    (path / "logo-64x64.png").write_bytes(b"\x89PNG logo")
    return path


def test_add_kernel_as_1x_scripts_call_it(tmp_path):
    """The 1.x README's call (with paths of this machine), plus prefix to keep the test private."""
    name = ssh_ipykernel.manage.add_kernel(
        host="btest", display_name="SSH btest:demo(abc)", local_python_path=sys.executable,
        remote_python_path="/opt/anaconda/envs/python36", sudo=False, env="VAR1=demo VAR2=abc", timeout=10,
        prefix=str(tmp_path))
    assert name == "ssh__sshbtestdemoabc" and isinstance(name, str)  # 1.x's name for that display name
    assert name.name == "ssh__sshbtestdemoabc" and name.directory == str(kernels_dir(tmp_path) / name)
    import copy
    import pickle

    for again in (copy.copy(name), pickle.loads(pickle.dumps(name))):
        assert (again, again.directory) == (name, name.directory)
    spec = json.loads((kernels_dir(tmp_path) / name / "kernel.json").read_text())
    assert spec["display_name"] == "SSH btest:demo(abc)" and spec["language"] == "python"
    assert spec["argv"] == [sys.executable, "-m", "ssh_ipykernel", "--host", "btest", "--python",
                            "/opt/anaconda/envs/python36", "--timeout", "10", "--env", "VAR1=demo", "--env", "VAR2=abc",
                            "-f", "{connection_file}"]


def test_add_kernel_positionally_and_with_todays_options(tmp_path):
    name = ssh_ipykernel.manage.add_kernel("u@h:2200", "GPU box", None, "~/env", {"A": "x B=y", "Q": "'q' $H"}, True,
                                           name="gpu", grace="2h", workdir="~/w", opt_args=["--persist", "600"],
                                           prefix=str(tmp_path))
    assert name == "gpu"
    argv = json.loads((kernels_dir(tmp_path) / "gpu" / "kernel.json").read_text())["argv"]
    options = ProxyOptions.from_params(parse_proxy_argv(argv))
    assert dict(options.env) == {"A": "x B=y", "Q": "'q' $H"}  # a dict's values are kept exactly
    assert (options.python, options.sudo, options.lifetime.grace, options.launch.workdir) == ("~/env", True, 7200, "~/w")
    assert options.connection.persist == 600 and argv[0] == sys.executable


def test_add_kernel_without_display_name_names_it_as_manage_add_does(tmp_path):
    assert ssh_ipykernel.manage.add_kernel("btest", prefix=str(tmp_path)) == "ssh_btest"


def test_add_kernel_system_wide(tmp_path, monkeypatch):
    import jupyter_client.kernelspec

    monkeypatch.setattr(jupyter_client.kernelspec, "SYSTEM_JUPYTER_PATH", [str(tmp_path / "system")])
    name = ssh_ipykernel.manage.add_kernel("btest", "B", sys.executable, "/env", system=True)
    assert name.directory == str(tmp_path / "system" / "kernels" / "ssh__b")


@pytest.mark.parametrize("kwargs, error, words", [
    ({"module": "my_kernel"}, UsageError, "module='my_kernel'"),
    ({"opt_args": ["--frobnicate"]}, UsageError, "No such option '--frobnicate'; opt_args takes"),
    ({"opt_args": "--grace 2h"}, UsageError, "give a list"),
    ({"opt_args": ["--log-level", "DEBUG"]}, UsageError, "--log-level is not recorded"),
    ({"local_python_path": "/opt/miniconda/envs/test36/bin/python"}, UsageError, "not an executable file"),
    ({"env": "1A=x"}, UsageError, "valid variable name"),
    ({"env": 5}, UsageError, "give a dict"),
    ({"timeout": 0}, UsageError, "--timeout"),
    ({"host": "btest;touch${IFS}x"}, HostSpecError, "not a host name"),
    ({"name": "bad name!"}, UsageError, "not a valid kernelspec name"),
    ({"system": True, "prefix": "/x"}, UsageError, "exclude each other"),
])
def test_add_kernel_bad_input_is_a_typed_error_and_writes_nothing(tmp_path, kwargs, error, words, capsys):
    args = {"host": "btest", "display_name": "D", "remote_python_path": "/env", "prefix": str(tmp_path), **kwargs}
    with pytest.raises(error) as e:
        ssh_ipykernel.manage.add_kernel(**args)
    assert words in str(e.value)
    assert not kernels_dir(tmp_path).exists()
    assert capsys.readouterr() == ("", "")


def test_list_upgrade_remove(tmp_path):
    old = write_v1_kernelspec(tmp_path, sudo=True)
    before = (old / "kernel.json").read_bytes()
    ssh_ipykernel.manage.add_kernel("btest", prefix=str(tmp_path))
    listed = {k["name"]: k for k in ssh_ipykernel.manage.list_kernels(str(tmp_path))}
    assert {n: k["form"] for n, k in listed.items()} == {"ssh__sshbtestdemoabc": "1.x", "ssh_btest": "current"}

    dry = ssh_ipykernel.manage.upgrade_kernel("ssh__sshbtestdemoabc", prefix=str(tmp_path), dry_run=True)
    assert dry.needed and not dry.written and (old / "kernel.json").read_bytes() == before
    assert "--env" in dry.old_argv and "VAR1=demo VAR2=abc" in dry.old_argv and "-s" in dry.old_argv
    assert dry.new_argv[-9:] == ["--timeout", "10", "--env", "VAR1=demo", "--env", "VAR2=abc", "--sudo", "-f",
                                 "{connection_file}"]

    done = ssh_ipykernel.manage.upgrade_kernel("ssh__sshbtestdemoabc", prefix=str(tmp_path))
    assert done.written and done.new_argv == dry.new_argv
    spec = json.loads((old / "kernel.json").read_text())
    assert spec["argv"] == done.new_argv
    assert (spec["display_name"], spec["language"]) == ("SSH btest:demo(abc)", "python")
    assert spec["metadata"]["ssh_ipykernel"]["host"] == "btest" and (old / "logo-64x64.png").exists()
    assert ProxyOptions.from_params(parse_proxy_argv(done.new_argv)) == \
        ProxyOptions.from_params(parse_proxy_argv(done.old_argv))
    assert not ssh_ipykernel.manage.upgrade_kernel("ssh__sshbtestdemoabc", prefix=str(tmp_path)).needed
    assert ssh_ipykernel.manage.upgrade_kernels(prefix=str(tmp_path)) == []

    assert ssh_ipykernel.manage.remove_kernel("ssh_btest", str(tmp_path)) == str(kernels_dir(tmp_path) / "ssh_btest")
    with pytest.raises(KernelSpecNotFoundError, match="ssh__sshbtestdemoabc"):
        ssh_ipykernel.manage.remove_kernel("ssh_btest", str(tmp_path))


def test_an_older_argv_form_is_marked_and_upgraded(tmp_path):
    """Not 1.x, not today's spelling: e.g. a hand-edited argv with the default timeout written out."""
    ssh_ipykernel.manage.add_kernel("btest", prefix=str(tmp_path))
    path = kernels_dir(tmp_path) / "ssh_btest" / "kernel.json"
    spec = json.loads(path.read_text())
    spec["argv"][-2:-2] = ["--timeout", "30"]
    path.write_text(json.dumps(spec))
    assert ssh_ipykernel.manage.list_kernels(str(tmp_path))[0]["form"] == "older"
    assert "--timeout" not in ssh_ipykernel.manage.upgrade_kernel("ssh_btest", prefix=str(tmp_path)).new_argv


def invoke(*args):
    return CliRunner().invoke(manage, list(args), catch_exceptions=False)


def test_manage_list_and_upgrade_commands(tmp_path):
    old = write_v1_kernelspec(tmp_path)
    before = (old / "kernel.json").read_bytes()
    r = invoke("list", "--prefix", str(tmp_path))
    assert r.exit_code == 0 and "1.x (upgrade)" in r.output and "upgrade --all --dry-run" in r.output

    r = invoke("upgrade", "--all", "--dry-run", "--prefix", str(tmp_path))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("Would upgrade ssh__sshbtestdemoabc (1.x form)")
    assert lines[1].startswith("  old argv: ") and "--env 'VAR1=demo VAR2=abc'" in lines[1]
    assert lines[2].startswith("  new argv: ") and "--env VAR1=demo --env VAR2=abc" in lines[2]
    assert lines[3] == "Nothing written (--dry-run)." and (old / "kernel.json").read_bytes() == before

    r = invoke("upgrade", "ssh__sshbtestdemoabc", "--prefix", str(tmp_path))
    assert r.exit_code == 0 and r.output.startswith("Upgraded ssh__sshbtestdemoabc (1.x form)")
    r = invoke("upgrade", "ssh__sshbtestdemoabc", "--prefix", str(tmp_path))
    assert r.output == "ssh__sshbtestdemoabc is in today's form already: nothing to do.\n"
    assert "nothing to upgrade" in invoke("upgrade", "--all", "--prefix", str(tmp_path)).output
    assert "current" in invoke("list", "--prefix", str(tmp_path)).output
    r = invoke("upgrade", "--prefix", str(tmp_path))
    assert r.exit_code == 2 and "NAME or --all" in r.output
    r = invoke("upgrade", "ssh_none", "--prefix", str(tmp_path))
    assert r.exit_code == 3 and "no kernelspec named" in r.output


def test_upgrade_of_an_unwritable_kernelspec_says_so(tmp_path, monkeypatch):
    old = write_v1_kernelspec(tmp_path)
    before = (old / "kernel.json").read_bytes()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(os, "replace", refuse)  # as for another user's (or a system-wide) kernelspec
    with pytest.raises(UsageError, match="permission denied writing .* as the user who owns it"):
        ssh_ipykernel.manage.upgrade_kernel("ssh__sshbtestdemoabc", prefix=str(tmp_path))
    assert (old / "kernel.json").read_bytes() == before and sorted(os.listdir(old)) == ["kernel.json", "logo-64x64.png"]


def test_show_of_a_1x_kernelspec_gives_the_variables_as_the_proxy_reads_them(tmp_path):
    write_v1_kernelspec(tmp_path, sudo=True)
    r = invoke("show", "ssh__sshbtestdemoabc", "--prefix", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "env:            VAR1=demo\n                VAR2=abc\n" in r.output
    assert "sudo:           yes" in r.output and "timeout:        10.0" in r.output
    assert "form:           1.x (upgrade)" in r.output


def test_upgrade_all_goes_on_past_a_kernelspec_it_cannot_read(tmp_path):
    bad = write_v1_kernelspec(tmp_path, name="ssh__bad")
    spec = json.loads((bad / "kernel.json").read_text())
    spec["argv"][spec["argv"].index("--host") + 1] = "btest;reboot"
    (bad / "kernel.json").write_text(json.dumps(spec))
    write_v1_kernelspec(tmp_path)
    assert {k["name"]: k["form"] for k in ssh_ipykernel.manage.list_kernels(str(tmp_path))} == {
        "ssh__bad": "unreadable", "ssh__sshbtestdemoabc": "1.x"}
    r = CliRunner().invoke(manage, ["upgrade", "--all", "--prefix", str(tmp_path)])
    assert r.exit_code == 2
    assert "cannot upgrade kernelspec ssh__bad" in r.output and "Add it again" in r.output
    assert "Upgraded ssh__sshbtestdemoabc (1.x form)" in r.output
    with pytest.raises(UsageError, match="cannot upgrade kernelspec ssh__bad"):
        ssh_ipykernel.manage.upgrade_kernel("ssh__bad", prefix=str(tmp_path))


def test_an_empty_1x_env_sets_nothing(tmp_path):
    """1.x's docstring gave env's default as "": add_kernel(env="") wrote --env ""."""
    write_v1_kernelspec(tmp_path, env="")
    [listed] = ssh_ipykernel.manage.list_kernels(str(tmp_path))
    assert listed["form"] == "1.x" and listed["options"]["env"] == ("",)
    done = ssh_ipykernel.manage.upgrade_kernel(listed["name"], prefix=str(tmp_path), dry_run=True)
    assert "--env" not in done.new_argv
    name = ssh_ipykernel.manage.add_kernel("btest", "E", sys.executable, "/env", env="", prefix=str(tmp_path))
    assert "--env" not in json.loads((kernels_dir(tmp_path) / name / "kernel.json").read_text())["argv"]
