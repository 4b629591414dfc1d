"""The session client's public lifecycle (session/client.py), with a transport that runs the remote
command in a local shell: start, the supervisor's fds and events, commands, attach, stop."""
import os
import selectors
import socket
import subprocess
import sys
import time

import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.remote.protocol import Event
from ssh_ipykernel.session.client import Readout, RemoteKernel
from ssh_ipykernel.session.startcmd import LoginShell
from ssh_ipykernel.transport.streamlocal import SocketSession


class LocalShell:
    """Just enough of a Transport: the 'remote' is this machine."""

    def __init__(self, env):
        self.host = parse_host("btest")
        self.env = env
        self.commands = []

    #: What open_unix_stream does: None (no direct streams, as a server that refuses them),
    #: "connect" (to the socket itself, as SSH's direct-streamlocal channel does) or "refuse"
    #: (a stream that ends before anyone speaks, as OpenSSH's when the server refuses the channel).
    streams = None

    def start_command(self, command):
        self.commands.append(command)
        return subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env, start_new_session=True)

    def open_unix_stream(self, path, timeout):
        if self.streams is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.streams == "connect":
            # Through the directory's descriptor: tmp_path can pass the 108-byte limit of a
            # socket address (the keeper itself binds with a relative name for the same reason).
            directory = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                sock.connect(f"/proc/self/fd/{directory}/{os.path.basename(path)}")
            finally:
                os.close(directory)
            return SocketSession(sock, lambda: None)
        ours, theirs = socket.socketpair()
        theirs.close()
        return SocketSession(ours, lambda: None)


@pytest.fixture
def shell(tmp_path):
    return LocalShell(dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime")))


def kernel(shell, **kw):
    kw.setdefault("grace", 60)  # a reconnect leaves the kernel without a client for a moment
    return RemoteKernel(shell, kernel_id="sess-1", key="k" * 32, signature_scheme="hmac-sha256",
                        python=sys.executable, **kw)


def wait_for(kernel, kind, timeout=30):
    """What the supervisor's loop does: select on filenos(), read(fd), look at the events."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for fd in kernel.filenos():
            sel.register(fd, selectors.EVENT_READ)
        events = kernel.take_events()
        while time.monotonic() < deadline:
            found = [e for e in events if e["event"] == kind]
            if found:
                return found[0]
            events = []
            for key, _ in sel.select(deadline - time.monotonic()):
                got = kernel.read(key.fd)
                assert isinstance(got, Readout)
                if got.closed:
                    sel.unregister(key.fd)
                assert not got.ended, "the session ended"
                events += got.events
    raise AssertionError(f"no {kind} event")


@pytest.mark.timeout(120)
def test_the_lifecycle_through_public_methods_only(shell):
    k = kernel(shell)
    try:
        info = k.start(60)
        assert info.pid > 0 and set(info.ports) >= {"shell_port", "hb_port"} and info.socket.endswith(".sock")
        assert k.host == "btest" and k.host_spec == "btest"
        assert len(k.filenos()) == 2
        assert k.ping()
        assert wait_for(k, Event.PONG) == {"event": "pong"}
        # a new session to the same kernel (what a reconnect does)
        assert k.attach(shell, 30).pid == info.pid
        assert len(shell.commands) == 2 and shell.commands[0] == shell.commands[1]  # the key is never on it
        assert "k" * 32 not in shell.commands[0]
        assert k.interrupt()
        assert k.request_shutdown()
        exited = wait_for(k, Event.EXITED)
        assert exited["reason"] == "requested"
    finally:
        k.close()
        k.close()  # safe twice
    assert k.filenos() == [] and not k.ping()


@pytest.mark.timeout(120)
def test_a_reattach_reaches_the_keeper_socket_directly_when_the_transport_can(shell):
    """No remote process for a re-attach: the keeper greets the direct stream as it greets a
    relay, and the same checks (pid, ports) apply; commands and pings go the same way."""
    shell.streams = "connect"
    k = kernel(shell)
    try:
        info = k.start(60)
        assert k.attach(shell, 30).pid == info.pid
        assert len(shell.commands) == 1 and k.direct and k.attached_directly  # nothing started for the attach
        assert k.ping() and wait_for(k, Event.PONG) == {"event": "pong"}
        assert k.request_shutdown()
        assert wait_for(k, Event.EXITED)["reason"] == "requested"
    finally:
        k.close()


@pytest.mark.timeout(120)
def test_a_refused_direct_stream_falls_back_on_the_relay_for_good(shell):
    shell.streams = "refuse"
    k = kernel(shell)
    try:
        info = k.start(60)
        assert k.attach(shell, 30).pid == info.pid
        assert len(shell.commands) == 2 and not k.direct and not k.attached_directly  # the relay, for good
        assert k.attach(shell, 30).pid == info.pid
        assert len(shell.commands) == 3
        assert k.stop(15)["reason"] == "requested"
    finally:
        k.close()


@pytest.mark.timeout(60)
def test_a_failed_start_raises_the_translated_error(shell):
    k = kernel(shell)
    k.python = "/no/such/python"
    with pytest.raises(exc.RemotePythonNotFoundError):
        k.start(30)
    k.close()


@pytest.mark.timeout(120)
def test_stop_shuts_a_started_kernel_down(shell):
    k = kernel(shell)
    k.start(60)
    exited = k.stop(15)
    assert exited is not None and exited["reason"] == "requested"
    assert k.filenos() == []


def test_a_start_command_strategy_is_used_for_every_session(shell):
    class Recording(LoginShell):
        built = []

        def build(self, python):
            self.built.append(python)
            return super().build(python)

    k = kernel(shell, command=Recording())
    k.python = "/no/such/python"
    with pytest.raises(exc.RemotePythonNotFoundError):
        k.start(30)
    assert Recording.built == ["/no/such/python"]


@pytest.mark.parametrize("module", ["supervisor", "proxy", "connect", "check", "remoteinfo"])
def test_nobody_reaches_into_the_session(module):
    """The session's process, pipes and reader are its own: the public lifecycle is the seam."""
    import re
    from pathlib import Path

    import ssh_ipykernel

    text = (Path(ssh_ipykernel.__file__).parent / f"{module}.py").read_text()
    assert not re.search(r"kernel\.(_\w+|proc|reader|transport)\b", text), module


@pytest.mark.timeout(60)
def test_the_probe_runs_through_the_same_start_command(shell):
    from ssh_ipykernel.remoteinfo import run_probe

    result = run_probe(shell, python=sys.executable, timeout=30)
    assert result.data["event"] == "probe" and result.data["python"] == sys.executable
    assert result.part("requirements") == {"ok": True}
    assert shell.commands == [LoginShell().build(sys.executable)]
