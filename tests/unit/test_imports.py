"""The proxy stays small: it forwards ports, so it must not load a kernel client's machinery.

Jupyter starts one proxy per kernel and it lives as long as the kernel; every module it imports
costs memory for that whole time (target: <= 25 MB resident). These tests run the real entry
path in a fresh interpreter and fail if someone adds a heavy import to it.
"""
import json
import subprocess
import sys

import pytest

#: Nothing the proxy does needs these; each pulls in megabytes (zmq, tornado and jupyter_client's
#: client/manager machinery with traitlets and asyncio; paramiko with cryptography).
FORBIDDEN = (
    "zmq", "tornado", "asyncio", "traitlets", "jupyter_client", "jupyter_client.blocking",
    "jupyter_client.manager", "paramiko", "cryptography", "nacl", "IPython", "ipykernel",
)

# What a proxy loads, in a subprocess: the CLI up to its first failure (the connection file is
# missing: exit 2), then what it imports lazily once it connects (transport, control dir, agent).
PROBE = """
import json, runpy, sys
sys.argv = ["ssh_ipykernel", "--host", "btest", "-f", sys.argv[1]]
try:
    runpy.run_module("ssh_ipykernel", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
from ssh_ipykernel import state, transport
from ssh_ipykernel.session import bundle, client
from ssh_ipykernel.transport import openssh
openssh.control_dir()
bundle.agent_source()
bundle.agent_bundle_id()  # a warm start's pool record, a restart's look for its agent server
from ssh_ipykernel.remote.protocol import fingerprint
fingerprint(b"options")
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def proxy_modules(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("imports")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp / "missing.json")], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_probe_ran_the_proxy_command(proxy_modules: dict) -> None:
    assert proxy_modules["exit"] == 2  # the missing connection file, i.e. the proxy really ran
    for name in ("ssh_ipykernel.proxycli", "ssh_ipykernel.proxy", "ssh_ipykernel.transport.openssh"):
        assert name in proxy_modules["modules"]


@pytest.mark.parametrize("name", FORBIDDEN)
def test_the_proxy_does_not_import(proxy_modules: dict, name: str) -> None:
    loaded = [m for m in proxy_modules["modules"] if m == name or m.startswith(name + ".")]
    assert not loaded, f"the proxy imports {loaded}: import it lazily where it is needed"


def test_manage_does_not_import_a_kernel_client() -> None:
    # manage needs jupyter_client's KernelSpecManager, but only when it installs, and never zmq.
    code = "import sys, ssh_ipykernel.manage; print([m for m in ('zmq', 'tornado', 'paramiko') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["ssh_ipykernel.supervisor", "ssh_ipykernel.policy", "ssh_ipykernel.session.slurmkernel"])
def test_what_serves_a_kernel_is_not_imported_before_it_is_launched(proxy_modules: dict, name: str) -> None:
    """The proxy's start imports these while the remote launches the kernel (a thread), or
    never (SLURM without --slurm): a restart's new proxy reaches the remote sooner."""
    assert name not in proxy_modules["modules"]


def test_the_proxy_does_not_load_openssl(proxy_modules: dict) -> None:
    """hashlib brings OpenSSL's libcrypto: ~4 MB of the proxy's resident memory for a
    fingerprint that zlib's checksums give (protocol.fingerprint)."""
    assert "_hashlib" not in proxy_modules["modules"] and "hashlib" not in proxy_modules["modules"]
