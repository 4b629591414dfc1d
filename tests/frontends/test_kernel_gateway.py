"""Jupyter Kernel Gateway serves the SSH kernel: REST to create and delete it, the websocket
channel to run code on it.

Requests carry an ``env`` as jupyter_server's gateway client sends them (``KERNEL_*`` values);
the gateway then gives the kernel only PATH plus the variables named in its
``env_process_whitelist`` (README, "Kernel Gateway").  These tests pin down what our proxy needs
there: nothing for a key file named in the ssh config, SSH_AUTH_SOCK for a key in an agent.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from frontend_support import require_modules
from jupyter_servers import JupyterServer, start_kernel_gateway
from kernels import KERNEL_PATTERN, manage, passphrase_copy, ssh_agent, wait_remote_clean

#: Ours to keep the proxy's control sockets in the test's runtime dir; not needed otherwise.
RUNTIME = "JUPYTER_RUNTIME_DIR"
PASSPHRASE = "passphrase"  # in the proxy's error and in the ssh prompt it quotes


@pytest.fixture
def gateway_modules() -> None:
    require_modules("kernel_gateway", "websocket")


def proxy_pids(kernel_id: str) -> List[int]:
    """Running local proxies of ``kernel_id`` (their argv names the connection file the gateway
    wrote); zombies, already exited, do not count."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ssh_ipykernel" in argv and any(a.endswith(f"kernel-{kernel_id}.json".encode()) for a in argv):
            found.append(int(pid))
    return found


def wait_for_proxy(kernel_id: str, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = proxy_pids(kernel_id)
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"the gateway started no proxy for kernel {kernel_id}")


def environ_of(pid: int) -> Dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def execute(gateway: JupyterServer, kernel_id: str, code: str, timeout: float = 60) -> Tuple[str, dict]:
    """Send one execute_request over the websocket channel; return (stdout text, execute_reply
    content).  The JSON message form of jupyter_server's websocket (no subprotocol)."""
    import websocket

    url = gateway.url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(url, header=[f"Authorization: token {gateway.token}"], timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "channel": "shell",
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        stdout: List[str] = []
        reply: Optional[dict] = None
        idle = False
        deadline = time.monotonic() + timeout
        while not (reply is not None and idle):
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(ws.recv())  # raises WebSocketTimeoutException past the deadline
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return "".join(stdout), reply
    finally:
        ws.close()


def create_kernel(gateway: JupyterServer, name: str) -> str:
    # As jupyter_server's GatewayClient does: an "env" with the KERNEL_* values, which turns on
    # the gateway's environment filter.
    status, body = gateway.request("POST", "/api/kernels", {"name": name, "env": {"KERNEL_USERNAME": "tester"}})
    assert status == 201, f"POST /api/kernels: HTTP {status} {body}\n{gateway.log()[-3000:]}"
    return body["id"]


def delete_kernel(gateway: JupyterServer, kernel_id: str) -> None:
    """DELETE the kernel; its local proxy must be gone when the gateway has answered."""
    status, body = gateway.request("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204, f"DELETE /api/kernels/{kernel_id}: HTTP {status} {body}\n{gateway.log()[-3000:]}"
    deadline = time.monotonic() + 5  # the gateway reaps its child on its own schedule
    while proxy_pids(kernel_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not proxy_pids(kernel_id), f"proxy still running after DELETE\n{gateway.log()[-3000:]}"


@pytest.fixture
def agent_kernelspec(ssh_host, ssh_kernelspec, jupyter_env, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An ssh-agent holding a passphrase-protected copy of the test key (exported as SSH_AUTH_SOCK
    for the gateway to inherit), an alias ``<host>-agent`` that uses it, and its kernelspec."""
    keys = jupyter_env.data.parent / "agent"  # short: the agent's socket path must fit 108 bytes
    keys.mkdir(mode=0o700)
    client = Path(ssh_host.ssh_config).parent
    key = passphrase_copy(client / "id_ed25519", keys / "id_in_agent")
    with ssh_agent(keys / "agent.sock", key) as sock:
        alias = f"{ssh_host.alias}-agent"
        config = keys / "ssh_config"
        config.write_text("\n".join([
            f"Host {alias}", f"  HostName {ssh_host.address}", f"  Port {ssh_host.port}", f"  User {ssh_host.user}",
            f'  IdentityFile "{key}"', "  IdentitiesOnly yes",
            f'  UserKnownHostsFile "{client / "known_hosts"}"', "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes", ""]))
        name = f"ssh_{alias}"
        manage(ssh_host, ssh_kernelspec.jupyter_path.parents[1], "--host", alias, "--python",
               ssh_host.env_prefix, "--ssh-config", str(config), "--name", name)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        yield name


@pytest.mark.both_transports
@pytest.mark.timeout(240)
def test_kernel_gateway_creates_runs_and_deletes_an_ssh_kernel(gateway_modules, ssh_host, ssh_kernelspec,
                                                               agent_kernelspec, tmp_path):
    with start_kernel_gateway(tmp_path / "gateway.log", env_process_whitelist=[RUNTIME]) as gateway:
        status, specs = gateway.request("GET", "/api/kernelspecs")
        assert status == 200 and ssh_kernelspec.name in specs["kernelspecs"], specs
        assert specs["kernelspecs"][ssh_kernelspec.name]["spec"]["display_name"] == ssh_kernelspec.display_name

        kernel_id = create_kernel(gateway, ssh_kernelspec.name)
        env = environ_of(wait_for_proxy(kernel_id))
        # The filter was on: key-file authentication needs none of these.
        for var in ("HOME", "SSH_AUTH_SOCK", "KG_AUTH_TOKEN", "JUPYTER_PATH"):
            assert var not in env, f"{var} reached the proxy: the gateway did not filter its environment"
        assert env["KERNEL_USERNAME"] == "tester"

        out, reply = execute(gateway, kernel_id, "import socket, os; print(socket.gethostname(), os.getpid())")
        assert reply["status"] == "ok", reply
        hostname, remote_pid = out.split()
        assert hostname == ssh_host.hostname, f"{out!r}\n{gateway.log()[-3000:]}"
        assert ssh_host.remote_pids(KERNEL_PATTERN) == [int(remote_pid)]

        delete_kernel(gateway, kernel_id)
        left = wait_remote_clean(ssh_host)
        assert not left, f"left on the remote after DELETE: {left}"

        # A key that lives in an agent cannot be used: SSH_AUTH_SOCK was filtered out, and ssh
        # would have to ask for the key's passphrase. The proxy fails with exit 25 (every time
        # the gateway's restarter tries again), says why in the gateway's log, and starts nothing.
        exits = record_exit_codes(ssh_kernelspec.jupyter_path / "kernels" / agent_kernelspec, tmp_path / "exits")
        kernel_id = create_kernel(gateway, agent_kernelspec)
        deadline = time.monotonic() + 60
        while not (exits.exists() and PASSPHRASE in gateway.log().lower()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert PASSPHRASE in gateway.log().lower(), gateway.log()[-3000:]
        codes = exits.read_text().split() if exits.exists() else []
        assert codes and set(codes) == {"25"}, f"proxy exit codes {codes}\n{gateway.log()[-3000:]}"
        assert not ssh_host.remote_pids(KERNEL_PATTERN)
        delete_kernel(gateway, kernel_id)
        left = wait_remote_clean(ssh_host)
        assert not left, f"left on the remote after the failed start: {left}"


def record_exit_codes(spec_dir: Path, exits: Path) -> Path:
    """Run the kernelspec's proxy under a shell that appends its exit code to ``exits`` (the
    gateway is the proxy's parent, so the test cannot wait for it); the argv is otherwise as
    manage wrote it."""
    spec_file = spec_dir / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["argv"] = ["/bin/sh", "-c", f'"$@"; code=$?; echo $code >> {exits}; exit $code', "proxy", *spec["argv"]]
    spec_file.write_text(json.dumps(spec))
    return exits


@pytest.mark.both_transports
@pytest.mark.timeout(240)
def test_kernel_gateway_passes_ssh_auth_sock_when_allowed(gateway_modules, ssh_host, agent_kernelspec, tmp_path):
    with start_kernel_gateway(tmp_path / "gateway.log", env_process_whitelist=[RUNTIME, "SSH_AUTH_SOCK"]) as gateway:
        kernel_id = create_kernel(gateway, agent_kernelspec)
        assert environ_of(wait_for_proxy(kernel_id))["SSH_AUTH_SOCK"] == os.environ["SSH_AUTH_SOCK"]
        out, reply = execute(gateway, kernel_id, "import socket; print(socket.gethostname())")
        assert (reply["status"], out) == ("ok", f"{ssh_host.hostname}\n"), gateway.log()[-3000:]
        delete_kernel(gateway, kernel_id)
        left = wait_remote_clean(ssh_host)
        assert not left, f"left on the remote after DELETE: {left}"
