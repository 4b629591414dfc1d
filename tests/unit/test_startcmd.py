"""The remote start command (session/startcmd.py), run for real by local shells, and the exit-code translations."""
import os
import subprocess

import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.remote import protocol
from ssh_ipykernel.remote_errors import error_for_exit
from ssh_ipykernel.session.bundle import LOADER
from ssh_ipykernel.session.startcmd import (LoginShell, PreCommand, StartCommand, Step, Sudo, build_remote_command,
                                           sh_quote, start_command)

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
    # A path that names a real program here (hypothesis once made "/bin/sg") is one path, found:
    # it runs, rightly. The property is about the others.
    for candidate in (python, os.path.join(python, "bin", "python"), os.path.join(python, "bin", "python3")):
        assume(not os.path.exists(os.path.join(tmp_path, os.path.expanduser(candidate))))
    for shell in SHELLS:
        r = run(build_remote_command(python), shell, cwd=tmp_path,
                env=dict(os.environ, PATH="/nonexistent", HOME=str(tmp_path)))
        assert not (tmp_path / "MARK").exists(), (python, shell)
        assert r.returncode == protocol.EXIT_PYTHON_NOT_FOUND, (python, shell, r.stderr)


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


# --- the strategy --------------------------------------------------------------------------------

def test_start_command_is_composed_of_steps():
    command = start_command(sudo=True, pre_command="module load x")
    assert isinstance(command, LoginShell)
    assert [type(step) for step in command.steps] == [PreCommand, Sudo]
    assert command.build("/x") == build_remote_command("/x", sudo=True, pre_command="module load x")
    assert start_command().build(None) == LoginShell().build(None)


def test_a_new_step_plugs_in_without_touching_the_others(fake_env):
    class Niced(Step):  # what a scheduler's wrapper looks like: text before exec, fixed or quoted
        def exec_prefix(self) -> str:
            return "nice -n 1 "

    r = run(LoginShell([Niced()]).build(str(fake_env)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"RAN:{fake_env}/bin/python:-c"


def test_a_start_command_of_its_own_wraps_a_login_shell(fake_env):
    class Wrapped(StartCommand):  # e.g. a scheduler running the login shell's text on a node
        def build(self, python):
            return "exec /bin/sh -c " + sh_quote(LoginShell().build(python))

    r = run(Wrapped().build(str(fake_env)))
    assert r.stdout.strip() == f"RAN:{fake_env}/bin/python:-c"


def test_the_command_line_holds_no_user_value_but_the_python_path():
    command = build_remote_command("/opt/env")
    assert command.count("'/opt/env'") == 1
    assert sh_quote(LOADER) in command
