"""What the remote agent starts (remote/kernelcmd.py), run locally against real kernelspecs."""
import json
import os
import sys
from pathlib import Path

import pytest

from ssh_ipykernel.remote import kernelcmd, launch
from ssh_ipykernel.remote.kernelcmd import check_requirements, kernel_command, resolve_workdir
from ssh_ipykernel.remote.protocol import PROTOCOL, AgentParams, BootstrapError, validate_params

CF = "/run/user/1/kernel-ssh-x.json"


def raw(**over):
    p = {"protocol": PROTOCOL, "kernel_id": "k1", "key": "", "env": {}}
    p.update(over)
    return p


def params(**over):
    return AgentParams.start(**raw(**over))


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    """A private Jupyter path holding kernelspecs written by the test."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jp"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))

    def install(name, spec):
        d = tmp_path / "jp" / "kernels" / name
        d.mkdir(parents=True)
        (d / "kernel.json").write_text(json.dumps(spec))
        return d

    return install


def test_default_is_ipykernel_with_the_agents_python():
    cmd = kernel_command(params(env={"A": "1"}), CF, "/env/bin/python")
    assert cmd["argv"] == ["/env/bin/python", "-m", "ipykernel_launcher", "-f", CF]
    assert cmd["env"] == {"A": "1"}
    assert cmd["cwd"] is None
    assert (cmd["interrupt_mode"], cmd["language"]) == ("signal", "python")


def test_remote_kernelspec_is_substituted_as_jupyter_does(kernels, monkeypatch, tmp_path):
    d = kernels("echo", {
        "argv": ["python", "{resource_dir}/echo.py", "-f", "{connection_file}", "{prefix}", "{unknown}"],
        "display_name": "Echo", "language": "echo", "interrupt_mode": "message",
        "env": {"ECHO_HOME": "${HOME}/echo", "KEEP": "$$literal", "A": "from-spec"},
        "metadata": {"debugger": False},
    })
    monkeypatch.setenv("HOME", str(tmp_path))
    cmd = kernel_command(params(remote_kernel="echo", env={"A": "from-user"}), CF, "/env/bin/python")
    assert cmd["argv"] == ["/env/bin/python", f"{d}/echo.py", "-f", CF, sys.prefix, "{unknown}"]
    assert cmd["env"] == {"ECHO_HOME": f"{tmp_path}/echo", "KEEP": "$literal", "A": "from-user"}
    assert (cmd["interrupt_mode"], cmd["language"], cmd["display_name"]) == ("message", "echo", "Echo")
    assert cmd["metadata"] == {"debugger": False}
    assert cmd["resource_dir"] == str(d)


def test_missing_remote_kernelspec_names_the_installed_ones(kernels):
    kernels("julia-1.10", {"argv": ["julia", "{connection_file}"], "display_name": "Julia", "language": "julia"})
    with pytest.raises(BootstrapError) as e:
        kernel_command(params(remote_kernel="ir"), CF, sys.executable)
    assert e.value.code == "kernelspec"
    assert "no kernelspec 'ir'" in e.value.message and "julia-1.10" in e.value.message


def test_kernelspec_that_cannot_take_the_connection_file_is_refused(kernels):
    kernels("odd", {"argv": ["odd-kernel"], "display_name": "Odd", "language": "odd"})
    with pytest.raises(BootstrapError, match="no {connection_file}") as e:
        kernel_command(params(remote_kernel="odd"), CF, sys.executable)
    assert e.value.code == "kernelspec"


def test_explicit_command_gets_only_the_connection_file():
    cmd = kernel_command(params(kernel_cmd=["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}",
                                            "$(touch x) {prefix}"]), CF, "/p")
    assert cmd["argv"] == ["R", "--slave", "-e", "IRkernel::main()", "--args", CF, "$(touch x) {prefix}"]
    assert cmd["interrupt_mode"] == "signal" and cmd["language"] == ""


def test_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "work dir").mkdir()
    (tmp_path / "file").write_text("")
    assert resolve_workdir("~") == str(tmp_path)
    assert resolve_workdir("~/work dir") == str(tmp_path / "work dir")
    monkeypatch.chdir(tmp_path)
    assert resolve_workdir("work dir") == str(tmp_path / "work dir")  # relative to the login dir
    assert resolve_workdir(None) is None
    for bad, words in (("~/nope", "does not exist"), ("~/file", "not a directory")):
        with pytest.raises(BootstrapError, match=words) as e:
            resolve_workdir(bad)
        assert e.value.code == "workdir"


#: Where this checkout's package is, for a Python run as another user.
ROOT = str(Path(kernelcmd.__file__).resolve().parents[2])


def test_workdir_without_permission(tmp_path):
    """A directory the user may not enter. Root enters any directory, so as root (always, in CI)
    the check runs in a Python of its own as the unprivileged user ``nobody``."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o600)
        with pytest.raises(BootstrapError, match="permission denied") as e:
            resolve_workdir(str(locked))
        assert e.value.code == "workdir"
        return
    import pwd
    import subprocess
    import tempfile

    nobody = pwd.getpwnam("nobody")
    base = tempfile.mkdtemp(prefix="sik-workdir-")  # tmp_path's parents are root's, mode 0700
    try:
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        locked, open_dir = os.path.join(base, "locked"), os.path.join(base, "open")
        for path, mode in ((locked, 0o600), (open_dir, 0o700)):
            os.mkdir(path, mode)
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
                "from ssh_ipykernel.remote.kernelcmd import resolve_workdir\n"
                "from ssh_ipykernel.remote.protocol import BootstrapError\n"
                "print(resolve_workdir(sys.argv[3]))\n"
                "try:\n    resolve_workdir(sys.argv[2])\n"
                "except BootstrapError as e:\n    print(e.code, e)\n")
        r = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                            sys.executable, "-B", "-I", "-c", code, ROOT, locked, open_dir],
                           capture_output=True, text=True, timeout=60)
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    entered, refused = r.stdout.splitlines()
    assert entered == open_dir  # the same user enters its own 0700 directory
    assert refused == f"workdir the working directory {locked} cannot be entered (permission denied)"


def test_only_the_default_kernel_needs_ipykernel_here(monkeypatch):
    real = kernelcmd.importlib.util.find_spec
    monkeypatch.setattr(kernelcmd.importlib.util, "find_spec", lambda m: None if m == "ipykernel" else real(m))
    with pytest.raises(BootstrapError) as e:
        check_requirements(params())
    assert e.value.code == "no_ipykernel"
    check_requirements(params(remote_kernel="ir"))
    check_requirements(params(kernel_cmd=["x", "{connection_file}"]))


@pytest.mark.parametrize("over, words", [
    ({"remote_kernel": "a b"}, "not a kernelspec name"),
    ({"remote_kernel": 3}, "not a kernelspec name"),
    ({"kernel_cmd": "R {connection_file}"}, "list of strings"),
    ({"kernel_cmd": []}, "list of strings"),
    ({"kernel_cmd": ["R", "x\0y", "{connection_file}"]}, "list of strings"),
    ({"kernel_cmd": ["R", "--args"]}, "{connection_file}"),
    ({"kernel_cmd": ["R", "{connection_file}"], "remote_kernel": "ir"}, "exclude"),
    ({"workdir": ""}, "not a path"),
    ({"workdir": ["~"]}, "not a path"),
])
def test_new_params_are_validated(over, words):
    with pytest.raises(BootstrapError, match=words) as e:
        validate_params(raw(**over))
    assert e.value.code == "bad_params"


def test_valid_new_params_pass():
    p = raw(remote_kernel="julia-1.10", workdir="~/w", kernel_cmd=None)
    assert validate_params(p) == params(remote_kernel="julia-1.10", workdir="~/w")


@pytest.mark.parametrize("argv, started", [
    (["/env/bin/python", "-m", "ipykernel_launcher", "-f", CF],
     ["/env/bin/python", "-c", kernelcmd.LAUNCHER, "-f", CF]),
    (["/env/bin/python", "-O", "-m", "ipykernel_launcher", "-f", CF, "--debug"],
     ["/env/bin/python", "-O", "-c", kernelcmd.LAUNCHER, "-f", CF, "--debug"]),
    (["/env/bin/python", "-m", "ipykernel", "-f", CF], None),  # another entry point: as it is
    (["/opt/julia", "-i", "kernel.jl", CF], None),
    (["python3", "-m", "other", "-m", "ipykernel_launcher", CF], None),  # a module's own arguments
])
def test_ipykernel_is_started_through_the_launcher_and_anything_else_as_it_is(argv, started):
    assert kernelcmd.launch_argv(argv) == (started or argv)


def test_the_launcher_is_launch_py_ending_in_its_cold_start():
    """One copy of the launch tweaks: the cold launcher is launch.py's text (the warm pool's is
    the same module: test_warm.py), and runs nothing but launch.cold_start."""
    text = (Path(launch.__file__)).read_text()
    assert kernelcmd.LAUNCHER == text + "\ncold_start()\n"


#: Stands in for ipykernel_launcher: makes sockets in the order ipykernel does (its ROUTERs,
#: then IOPub), one more publisher as user code would, and says what it sees.
FAKE_LAUNCHER = """
import json, sys, zmq
ctx = zmq.Context()
shell = ctx.socket(zmq.ROUTER)
iopub = ctx.socket(zmq.XPUB)
users = ctx.socket(zmq.PUB)
with open("/proc/self/cmdline", "rb") as f:
    cmdline = f.read().rstrip(b"\\0").decode().split("\\0")
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__, "file": __file__,
                  "shell": shell.sndhwm, "iopub": iopub.sndhwm, "users": users.sndhwm,
                  "main": sys.modules["__main__"].__file__, "cmdline": cmdline,
                  "orig_argv": getattr(sys, "orig_argv", None)}))
"""


#: Python < 3.10 has no sys.orig_argv: the launcher then reads /proc/self/cmdline.
WITHOUT_ORIG_ARGV = "import sys\nif hasattr(sys, 'orig_argv'):\n    del sys.orig_argv\n"


@pytest.mark.parametrize("options, before", [([], ""), (["-O", "-W", "ignore"], ""), ([], WITHOUT_ORIG_ARGV)],
                         ids=["plain", "python-options", "python-3.8"])
def test_the_launcher_runs_ipykernel_as_python_m_does_with_a_larger_iopub_queue(tmp_path, options, before):
    """The same sys.argv, sys.path[0], ``__main__``, sys.orig_argv and command line (ps) as
    ``python -m ipykernel_launcher``; only the kernel's IOPub publisher gets IOPUB_HWM, a
    publisher made after it (user code) ZeroMQ's default."""
    import subprocess

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "ipykernel_launcher.py").write_text(FAKE_LAUNCHER)
    (tmp_path / "cwd").mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "mods"))
    seen = {}
    plain_argv = [sys.executable, *options, "-m", "ipykernel_launcher", "-f", CF]
    for way in ("plain", "launcher"):
        argv = kernelcmd.launch_argv(plain_argv) if way == "launcher" else plain_argv
        if way == "launcher" and before:
            argv[argv.index("-c") + 1] = before + argv[argv.index("-c") + 1]
        out = subprocess.run(argv, cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        seen[way] = json.loads(out.stdout)
    plain, launched = seen["plain"], seen["launcher"]
    assert launched["iopub"] == launch.IOPUB_HWM and plain["iopub"] == 1000
    assert launched["users"] == plain["users"] == 1000 and launched["shell"] == plain["shell"] == 1000
    for field in ("argv", "path0", "name", "file", "main", "cmdline", "orig_argv"):
        if field != "orig_argv" or not before:
            assert launched[field] == plain[field], field
    assert plain["argv"] == [str(tmp_path / "mods" / "ipykernel_launcher.py"), "-f", CF]
    assert plain["cmdline"] == plain_argv
