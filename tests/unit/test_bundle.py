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


@pytest.mark.parametrize("modules, main", [(bundle.AGENT_MODULES, "bootstrap"), (bundle.PROBE_MODULES, "probe")])
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
    shipped = set(bundle.AGENT_MODULES) | set(bundle.PROBE_MODULES) | set(bundle.NODE_MODULES) | {"loader", "__init__"}
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


def test_only_the_modules_a_session_uses_are_loaded():
    sources = read_sources(bundle.AGENT_MODULES)
    sources["which"] = (FILENAME % "which", (
        "import sys\n"
        "from . import protocol\n"
        "def main():\n"
        "    print(sorted(m for m in sys.modules if m.startswith('ssh_ipykernel_remote.')))\n"
    ))
    r = run_program(pack(sources, "which"))
    assert r.stdout.strip() == b"['ssh_ipykernel_remote.protocol', 'ssh_ipykernel_remote.which']", r.stderr


@pytest.mark.parametrize("name", sorted(set(bundle.AGENT_MODULES) | set(bundle.PROBE_MODULES) | {"loader"}))
def test_shipped_modules_parse_as_python_3_8(name):
    ast.parse((REMOTE / f"{name}.py").read_text(), feature_version=(3, 8))
