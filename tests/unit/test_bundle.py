"""The remote modules as shipped (session/bundle.py, remote/loader.py): real modules on the remote."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssh_ipykernel.remote import protocol
from ssh_ipykernel.session import bundle
from ssh_ipykernel.session.bundle import FILENAME, LOADER, agent_stdin, pack, read_sources
from ssh_ipykernel.session.startcmd import build_remote_command

REMOTE = Path(protocol.__file__).parent


def run_program(source: bytes, rest: bytes = b"", timeout: float = 30):
    return subprocess.run([sys.executable, "-c", LOADER], input=b"%d\n" % len(source) + source + rest,
                          capture_output=True, timeout=timeout)


def test_loader_runs_a_program_as_main():
    source = b"print('loaded', __name__)"
    r = run_program(source)
    assert r.stdout == b"loaded __main__\n"


def test_agent_stdin_carries_the_key_as_data_only():
    params = protocol.AgentParams.start(kernel_id="k", key="s3cr3t-key")
    data = agent_stdin(params)
    header, rest = data.split(b"\n", 1)
    source = rest[: int(header)]
    assert b"s3cr3t-key" not in source
    assert json.loads(rest[int(header):]) == json.loads(params.to_json())
    assert "s3cr3t-key" not in build_remote_command("/x")


@pytest.mark.parametrize("modules, main", [(bundle.AGENT_MODULES, "bootstrap"), (bundle.PROBE_MODULES, "probe"),
                                           (bundle.POOLS_MODULES, "pools")])
def test_each_bundle_ships_every_module_its_modules_import(modules, main):
    assert main in modules
    for name in modules:
        tree = ast.parse((REMOTE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                imported = [node.module] if node.module else [alias.name for alias in node.names]  # from . import x
                assert node.level == 1 and set(imported) <= set(modules), (name, imported)
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert not (node.module or "").startswith("ssh_ipykernel"), "the remote has no ssh_ipykernel"
    ast.parse(bundle.bundle_source(modules, main))


def test_every_remote_module_is_shipped_somewhere():
    shipped = (set(bundle.AGENT_MODULES) | set(bundle.PROBE_MODULES) | set(bundle.POOLS_MODULES)
               | set(bundle.NODE_MODULES) | {"loader", "__init__"})
    assert {p.stem for p in REMOTE.glob("*.py")} == shipped


def test_shipped_modules_are_real_modules_with_their_own_files():
    sources = read_sources(("protocol",))
    sources["show"] = (FILENAME % "show", (
        "import sys\n"
        "from . import protocol\n"
        "from .protocol import Event\n"
        "def main():\n"
        "    print(protocol.__name__, protocol.__file__, Event.READY, __name__, __file__, __package__)\n"
    ))
    r = run_program(pack(sources, "show"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["ssh_ipykernel_remote.protocol", "ssh_ipykernel/remote/protocol.py", "ready",
                                         "ssh_ipykernel_remote.show", "ssh_ipykernel/remote/show.py",
                                         "ssh_ipykernel_remote"]


def test_a_remote_traceback_names_the_module_file_and_line():
    """An error inside a shipped module is reported as remote/<module>.py, line N, with the text."""
    text = (REMOTE / "protocol.py").read_text()
    line = text.splitlines().index('            raise BootstrapError("bad_params", "parameters are not a JSON object")') + 1
    sources = read_sources(("protocol",))
    sources["fail"] = (FILENAME % "fail", (
        "import traceback\n"
        "from .protocol import AgentParams\n"
        "def main():\n"
        "    try:\n"
        "        AgentParams.from_dict([])\n"
        "    except Exception:\n"
        "        traceback.print_exc()\n"
        "    AgentParams.from_dict([])\n"
    ))
    r = run_program(pack(sources, "fail"))
    err = r.stderr.decode()
    assert r.returncode == 1
    assert f'File "ssh_ipykernel/remote/protocol.py", line {line}, in from_dict' in err
    assert 'File "ssh_ipykernel/remote/fail.py", line 5, in main' in err
    assert 'File "ssh_ipykernel/remote/fail.py", line 8, in main' in err  # the uncaught one
    assert 'raise BootstrapError("bad_params", "parameters are not a JSON object")' in err  # traceback's text
    assert "BootstrapError: parameters are not a JSON object" in err


def test_the_agent_program_answers_through_its_modules():
    # attach to a socket that does not exist: loader, modules, parameters, error event, exit code
    params = protocol.AgentParams.attach(kernel_id="k", socket="/nonexistent/x.sock")
    r = run_program(bundle.agent_source(), (params.to_json() + "\n").encode())
    assert r.returncode == protocol.EXIT_NO_KERNEL, r.stderr
    event = json.loads(r.stdout)
    assert event["event"] == "error" and event["code"] == "no_kernel"


def run_beside_the_agent(name: str, source: str):
    """Run the module ``name`` (its ``main``) shipped with the agent's modules; return the
    sources it was shipped with and the result."""
    sources = read_sources(bundle.AGENT_MODULES)
    sources[name] = (FILENAME % name, source)
    return sources, run_program(pack(sources, name))


def test_only_the_modules_a_session_uses_are_loaded():
    _, r = run_beside_the_agent("which", (
        "import sys\n"
        "from . import protocol\n"
        "def main():\n"
        "    print(sorted(m for m in sys.modules if m.startswith('ssh_ipykernel_remote.')))\n"
    ))
    assert r.stdout.strip() == b"['ssh_ipykernel_remote.protocol', 'ssh_ipykernel_remote.which']", r.stderr


@pytest.mark.parametrize("name", sorted(set(bundle.AGENT_MODULES) | set(bundle.PROBE_MODULES) | {"loader"}))
def test_shipped_modules_parse_as_python_3_8(name):
    ast.parse((REMOTE / f"{name}.py").read_text(), feature_version=(3, 8))


# -- the remote's code cache (remote/loader.py: compiled) ----------------------------------------------
@pytest.fixture()
def code_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    return tmp_path / "ssh_ipykernel" / "code"


def test_a_module_is_compiled_once_then_read_from_the_cache(code_cache):
    from ssh_ipykernel.remote import loader

    source = "VALUE = 41 + 1\n"
    first = loader.compiled("ssh_ipykernel/remote/x.py", source)
    (entry,) = code_cache.iterdir()
    assert entry.stat().st_mode & 0o777 == 0o600 and code_cache.stat().st_mode & 0o777 == 0o700
    # What the cache holds is what runs: another module's code put in its place shows it.
    other = loader.compiled("ssh_ipykernel/remote/y.py", "VALUE = 'from the cache'\n")
    entry.write_bytes(__import__("marshal").dumps(other))
    namespace: dict = {}
    exec(loader.compiled("ssh_ipykernel/remote/x.py", source), namespace)  # noqa: S102
    assert namespace["VALUE"] == "from the cache"
    exec(first, namespace)  # noqa: S102
    assert namespace["VALUE"] == 42
    # Another source (a new version) is another entry.
    loader.compiled("ssh_ipykernel/remote/x.py", "VALUE = 43\n")
    assert len(list(code_cache.iterdir())) == 3


def test_a_cache_others_can_write_to_is_not_used(code_cache):
    from ssh_ipykernel.remote import loader

    code_cache.mkdir(parents=True)
    code_cache.chmod(0o777)
    namespace: dict = {}
    exec(loader.compiled("ssh_ipykernel/remote/x.py", "VALUE = 1\n"), namespace)  # noqa: S102
    assert namespace["VALUE"] == 1 and not list(code_cache.iterdir())  # compiled, nothing written or read


def test_no_cache_is_written_when_python_writes_no_bytecode(code_cache, monkeypatch):
    from ssh_ipykernel.remote import loader

    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # PYTHONDONTWRITEBYTECODE, -B
    loader.compiled("ssh_ipykernel/remote/x.py", "VALUE = 1\n")
    assert not list(code_cache.iterdir())


def test_entries_of_earlier_versions_go_when_a_new_one_is_written(code_cache):
    import os
    import time

    from ssh_ipykernel.remote import loader

    loader.compiled("ssh_ipykernel/remote/x.py", "VALUE = 1\n")
    (old,) = code_cache.iterdir()
    long_ago = time.time() - (loader.CACHE_DAYS + 1) * 86400
    os.utime(old, (long_ago, long_ago))
    loader.compiled("ssh_ipykernel/remote/x.py", "VALUE = 2\n")
    assert not old.exists() and len(list(code_cache.iterdir())) == 1


def test_the_remote_and_the_proxy_name_the_agents_code_alike():
    """An agent server runs the code of the agent that made it: its socket's name carries the
    code's id as the remote computes it from the shipped sources, and a proxy compares the one
    it computes from its own files (bundle.agent_bundle_id)."""
    from ssh_ipykernel.remote.protocol import bundle_id

    sources, r = run_beside_the_agent("show", (
        "from .agentserver import shipped_sources\n"
        "from .protocol import bundle_id\n"
        "def main():\n"
        "    print(bundle_id(shipped_sources()))\n"
    ))
    assert r.stdout.decode().strip() == bundle_id(sources), r.stderr
    assert bundle.agent_bundle_id() == bundle_id(read_sources(bundle.AGENT_MODULES)) != bundle_id(sources)


def test_an_agent_server_serves_each_connection_with_a_fork_and_ends_when_idle(tmp_path):
    import os
    import socket
    import time

    from ssh_ipykernel.remote import agentserver

    def session():  # what bootstrap.main does on the connection: read the parameters, answer
        line = sys.stdin.buffer.readline()
        sys.stdout.write("pid %d got %s" % (os.getpid(), line.decode()))
        sys.stdout.flush()

    path = str(tmp_path / "agent-test.sock")
    kernel_socket = tmp_path / "kernel-ssh-k-1.sock"
    kernel_socket.touch()  # a kernel of ours runs: the server stays past its idle time
    assert agentserver.ensure(path, idle=0.5, serve_session=session)
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    answers = []
    for n in range(2):
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(path)
            client.sendall(b'{"n": %d}\n' % n)
            data = b""
            while data.count(b"\n") < 2:
                chunk = client.recv(4096)
                if not chunk:
                    break
                data += chunk
            answers.append(data.decode().splitlines())
    assert [a[0] for a in answers] == ['{"event": "hello"}'] * 2, answers
    pids = {a[1].split()[1] for a in answers}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # a fork each
    assert [a[1].split(" got ")[1] for a in answers] == ['{"n": 0}', '{"n": 1}']
    time.sleep(1.5)
    assert os.path.exists(path)  # past its idle time, but a kernel runs
    kernel_socket.unlink()
    deadline = time.monotonic() + 10
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path) and not os.path.exists(path[:-5] + ".lock")
