"""The remote start command, run for real by local shells, and the exit-code translations."""
import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st, example

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.launcher import LOADER, agent_stdin, build_remote_command, error_for_exit, sh_quote
from ssh_ipykernel.remote import protocol

# zsh: the login shell of macOS users (tools/setup.sh installs it).
SHELLS = [s for s in ("/bin/sh", "/bin/bash", "/bin/dash", "/usr/bin/zsh") if os.path.exists(s)]


@pytest.fixture
def fake_env(tmp_path):
    """An 'environment prefix' whose bin/python just reports how it was called."""
    prefix = tmp_path / "env with space"
    (prefix / "bin").mkdir(parents=True)
    python = prefix / "bin" / "python"
    python.write_text('#!/bin/sh\necho "RAN:$0:$1"\n')
    python.chmod(0o755)
    return prefix


def run(command, shell="/bin/sh", env=None, cwd=None):
    return subprocess.run([shell, "-c", command], capture_output=True, text=True, env=env, cwd=cwd, timeout=10)


@pytest.mark.parametrize("shell", SHELLS)
def test_prefix_resolves_to_bin_python(fake_env, shell):
    r = run(build_remote_command(str(fake_env)), shell)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"RAN:{fake_env}/bin/python:-c"


@pytest.mark.parametrize("shell", SHELLS)
def test_interpreter_path_is_used_as_is(fake_env, shell):
    r = run(build_remote_command(str(fake_env / "bin" / "python")), shell)
    assert r.stdout.strip() == f"RAN:{fake_env}/bin/python:-c"


def test_tilde_means_remote_home(fake_env, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))
    r = run(build_remote_command("~/" + fake_env.name), env=env)
    assert r.stdout.strip() == f"RAN:{fake_env}/bin/python:-c"


def test_bare_name_is_looked_up_on_path(fake_env):
    env = dict(os.environ, PATH=f"{fake_env}/bin:/usr/bin:/bin")
    r = run(build_remote_command("python"), env=env)
    assert r.stdout.strip() == f"RAN:{fake_env}/bin/python:-c"


@pytest.mark.parametrize("python", ["/no/such/python", "/tmp", "no-such-python-xyz", None])
def test_missing_python_has_its_own_exit_code(python, tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no python3 on this PATH
    r = run(build_remote_command(python), env=env)
    assert r.returncode == protocol.EXIT_PYTHON_NOT_FOUND
    assert "python not found" in r.stderr


def test_default_is_python3_on_path():
    assert "N='python3';" in build_remote_command(None)


def test_sudo_is_non_interactive():
    assert 'exec sudo -n -- "$P"' in build_remote_command("/x", sudo=True)


def test_loader_fits_in_single_quotes():
    assert "'" not in LOADER


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=30)
       | st.sampled_from(["$(touch MARK)", "`touch MARK`", "';touch MARK;'", '";touch MARK;"', "x;touch MARK",
                          "$(touch${IFS}MARK)", "a\ntouch MARK", "|touch MARK", "&& touch MARK", "~/$(touch MARK)",
                          "=0", "=touch", "~=x", "=(touch MARK)"]))
@example(python="=0")  # zsh expanded a bare leading "=" (found by this test in CI)
def test_hostile_python_paths_never_run_anything(tmp_path, python):
    """Whatever --python holds, the remote shell only ever treats it as one path."""
    for shell in SHELLS:
        r = run(build_remote_command(python), shell, cwd=tmp_path,
                env=dict(os.environ, PATH="/nonexistent", HOME=str(tmp_path)))
        assert not (tmp_path / "MARK").exists(), (python, shell)
        assert r.returncode == protocol.EXIT_PYTHON_NOT_FOUND, (python, shell, r.stderr)


def test_agent_stdin_carries_the_key_as_data_only():
    data = agent_stdin({"key": "s3cr3t-key", "protocol": 1})
    header, rest = data.split(b"\n", 1)
    source = rest[: int(header)]
    assert source.startswith(b"from __future__ import annotations\n")
    assert b"s3cr3t-key" in rest[int(header):]
    assert "s3cr3t-key" not in build_remote_command("/x")


@pytest.mark.parametrize(
    "returncode, event, cls, words",
    [
        (protocol.EXIT_PYTHON_NOT_FOUND, None, exc.RemotePythonNotFoundError, "not found on btest"),
        (protocol.EXIT_PYTHON_TOO_OLD, None, exc.RemotePythonTooOldError, "older than 3.8"),
        (protocol.EXIT_NO_IPYKERNEL, {"code": "no_ipykernel", "message": "m"}, exc.IPyKernelMissingError, "pip install ipykernel"),
        (protocol.EXIT_NO_JUPYTER_CLIENT, {"code": "no_jupyter_client", "message": "m"}, exc.IPyKernelMissingError, "jupyter_client"),
        (protocol.EXIT_CONNECTION_FILE, {"code": "connection_file", "message": "No space left"}, exc.RemoteConnectionFileError, "No space left"),
        (255, None, exc.ConnectionLostError, "SSH connection"),
        (127, None, exc.RemoteError, "POSIX login shell"),
        (1, None, exc.KernelStartError, "exited with code 1"),
    ],
)
def test_exit_codes_become_advice(returncode, event, cls, words):
    e = error_for_exit(returncode, "", host="btest", python="/opt/env", event=event)
    assert type(e) is cls
    assert words in e.message


def test_sudo_password_prompt_is_explained():
    e = error_for_exit(1, "sudo: a password is required\n", host="btest", python=None)
    assert isinstance(e, exc.SudoError)
    assert "NOPASSWD" in e.message


@pytest.mark.skipif(not shutil.which("python3"), reason="needs python3")
def test_loader_refuses_nothing_on_a_current_python():
    # The loader itself runs a tiny program sent the same way the agent is.
    source = b"print('loaded', __name__)"
    r = subprocess.run(["python3", "-c", LOADER], input=b"%d\n" % len(source) + source, capture_output=True, timeout=10)
    assert r.stdout == b"loaded __main__\n"


def test_agent_bundle_is_one_self_contained_program():
    import ast

    from ssh_ipykernel.launcher import agent_source

    tree = ast.parse(agent_source())
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    assert not relative, "imports between the agent's modules must end in # local-only"
    from_package = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("ssh_ipykernel")]
    assert not from_package, "the remote has no ssh_ipykernel installed"
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert {"Agent", "main", "validate_params", "write_event", "BootstrapError"} <= defined


def test_only_imports_are_local_only():
    """Dropping '# local-only' lines must never drop code."""
    from pathlib import Path

    from ssh_ipykernel.launcher import LOCAL_ONLY

    for path in Path(protocol.__file__).parent.glob("*.py"):
        for line in path.read_text().splitlines():
            if line.rstrip().endswith(LOCAL_ONLY):
                assert line.startswith("from ."), (path.name, line)


# --- --pre-command -------------------------------------------------------------------------------

@pytest.fixture
def env_reporter(tmp_path):
    """An environment prefix whose python reports its environment and what is left on stdin."""
    prefix = tmp_path / "env"
    (prefix / "bin").mkdir(parents=True)
    python = prefix / "bin" / "python"
    python.write_text('#!/bin/sh\nprintf "PRE=%s|ARG=%s|STDIN=%s\\n" "$SIK_PRE" "$SIK_ARG" "$(head -c 9)"\n')
    python.chmod(0o755)
    return prefix


@pytest.mark.parametrize("shell", SHELLS)
def test_pre_command_prepares_the_environment_python_starts_in(env_reporter, shell, tmp_path):
    # It may also be what puts python on PATH (conda activate, module load).
    pre = f'export SIK_PRE="a b"; PATH={env_reporter}/bin:$PATH; echo chatter; read -r line || true'
    r = subprocess.run([shell, "-c", build_remote_command("python", pre_command=pre)], input="AGENTSRC\nrest",
                       capture_output=True, text=True, timeout=10, env=dict(os.environ, PATH="/usr/bin:/bin"))
    assert r.returncode == 0, r.stderr
    # stdout stays the agent's (the pre-command's output goes to stderr); stdin is untouched.
    assert r.stdout == "PRE=a b|ARG=|STDIN=AGENTSRC\n"
    assert "chatter" in r.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_failing_pre_command_stops_before_python(fake_env, shell):
    r = run(build_remote_command(str(fake_env), pre_command=". /no/such/activate"), shell)
    assert r.returncode == protocol.EXIT_PRE_COMMAND
    assert "the pre-command failed" in r.stderr and "RAN" not in r.stdout
    e = error_for_exit(r.returncode, r.stderr, host="btest", python=None, pre_command=". /no/such/activate")
    assert isinstance(e, exc.PreCommandError)
    assert "ssh btest '. /no/such/activate'" in e.message


def test_pre_command_with_a_syntax_error_is_reported_as_such(fake_env):
    pre = "echo 'unterminated"
    for shell in SHELLS:
        r = run(build_remote_command(str(fake_env), pre_command=pre), shell)
        assert "RAN" not in r.stdout, shell
        e = error_for_exit(r.returncode, r.stderr, host="btest", python=None, pre_command=pre)
        assert isinstance(e, exc.PreCommandError), (shell, r.returncode, r.stderr)


HOSTILE = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30) | \
    st.sampled_from(["$(touch MARK)", "`touch MARK`", "';touch MARK;'", '";touch MARK;"', "x;touch MARK",
                     "a\ntouch MARK", "|touch MARK", "&& touch MARK", "$((1))$(touch MARK)", "\\';touch MARK"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arg=HOSTILE, python=HOSTILE)
def test_pre_command_arguments_and_python_path_never_become_commands(tmp_path, env_reporter, arg, python):
    """A quoted argument in the pre-command stays one argument; --python stays one path."""
    # Quoted as a careful user would for zsh too (shlex.quote leaves "=0" bare, which zsh expands).
    pre = f"export SIK_ARG={sh_quote(arg)}"
    for shell in SHELLS:
        r = subprocess.run([shell, "-c", build_remote_command(python, pre_command=pre)], capture_output=True,
                           text=True, cwd=tmp_path, timeout=10, env=dict(os.environ, PATH="/nonexistent", HOME=str(tmp_path)))
        assert not (tmp_path / "MARK").exists(), (arg, python, shell)
        assert r.returncode == protocol.EXIT_PYTHON_NOT_FOUND, (arg, python, shell, r.stderr)
    r = subprocess.run(["/bin/sh", "-c", build_remote_command(str(env_reporter), pre_command=pre)],
                       capture_output=True, cwd=tmp_path, timeout=10)  # bytes: no newline translation
    assert r.stdout.startswith(f"PRE=|ARG={arg}|".encode()), (arg, r.stdout)
    assert not (tmp_path / "MARK").exists()


@pytest.mark.parametrize(
    "code, cls, words",
    [
        ("kernelspec", exc.RemoteKernelSpecError, "jupyter kernelspec list"),
        ("workdir", exc.WorkdirError, "mkdir -p"),
        ("connection_file", exc.RemoteConnectionFileError, "JUPYTER_RUNTIME_DIR"),
    ],
)
def test_new_remote_errors_become_advice(code, cls, words):
    e = error_for_exit(protocol.ERROR_EXIT_CODES[code], "", host="btest", python=None,
                       event={"code": code, "message": "the detail"})
    assert type(e) is cls and words in e.message and "the detail" in e.message
    assert e.exit_code not in {c.exit_code for c in (exc.RemotePythonNotFoundError, exc.IPyKernelMissingError,
                                                     exc.SudoError, exc.TunnelError)}


def test_remote_modules_ship_kernelcmd_before_the_agent():
    from ssh_ipykernel.launcher import REMOTE_MODULES, agent_source

    assert REMOTE_MODULES.index("kernelcmd") < REMOTE_MODULES.index("agent")
    assert b"def kernel_command(" in agent_source()


def test_probe_bundle_is_self_contained():
    import ast

    from ssh_ipykernel.launcher import bundle_source
    from ssh_ipykernel.remoteinfo import PROBE_MODULES

    tree = ast.parse(bundle_source(PROBE_MODULES))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("ssh_ipykernel"))]
    assert {"probe", "kernel_command", "validate_params"} <= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
