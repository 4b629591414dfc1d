"""Order of the forwards on a reconnect: iopub first, the others once its client is back."""
from __future__ import annotations

import socket
import sys
import threading
import time

import pytest
from testutil import free_ports

from ssh_ipykernel.connection import CHANNELS
from ssh_ipykernel.transport.base import Forward
from ssh_ipykernel.tunnels import Tunnels, established

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")


class RecordingTransport:
    """Stands in for ssh's ``-O forward``: listens on the local ports like ssh would."""

    def __init__(self) -> None:
        self.calls: list = []
        self.listeners: list = []

    def forward(self, forwards) -> None:
        self.calls.append((time.monotonic(), [f.local_port for f in forwards]))
        for f in forwards:
            s = socket.socket()
            s.bind(("127.0.0.1", f.local_port))
            s.listen()
            self.listeners.append(s)

    def cancel(self, forwards) -> None:
        for s in self.listeners:
            s.close()


def forwards_for(ports) -> list:
    return [Forward(local_port=p, remote_port=p + 1, local_host="127.0.0.1") for p in ports]


def test_established_sees_a_connection_only_while_it_exists():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not established(port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    assert established(port)
    client.close()
    accepted.close()
    server.close()
    time.sleep(0.05)
    assert not established(port)


@pytest.fixture
def tunnels():
    """(local ports, the recording transport, Tunnels over them); closed at the end."""
    ports = free_ports(len(CHANNELS))
    transport = RecordingTransport()
    tunnels = Tunnels(transport, forwards_for(ports))  # type: ignore[arg-type]
    yield ports, transport, tunnels
    tunnels.close()


def test_reconnect_opens_iopub_control_and_hb_then_waits_for_its_client(tunnels):
    """Shell and stdin wait for iopub's subscriber (a queued execute must not run before it);
    control and heartbeat do not (kernel_info while a cell runs, interrupts: at once)."""
    ports, transport, tunnels = tunnels
    iopub = ports[CHANNELS.index("iopub_port")]
    first = [ports[CHANNELS.index(name)] for name in ("iopub_port", "control_port", "hb_port")]
    connected_at = []

    def subscriber() -> None:  # a ZeroMQ SUB retrying every 100 ms until the port listens
        while True:
            try:
                c = socket.create_connection(("127.0.0.1", iopub))
            except ConnectionRefusedError:
                time.sleep(0.1)
                continue
            connected_at.append(time.monotonic())
            time.sleep(2)
            c.close()
            return

    threading.Thread(target=subscriber, daemon=True).start()
    tunnels.open(iopub_first=True)
    assert transport.calls[0][1] == first
    assert sorted(transport.calls[1][1]) == sorted(ports[CHANNELS.index(name)] for name in ("shell_port", "stdin_port"))
    assert connected_at and transport.calls[1][0] > connected_at[0]


def test_first_start_opens_all_at_once(tunnels):
    ports, transport, tunnels = tunnels
    tunnels.open()
    assert [c[1] for c in transport.calls] == [ports]


def test_reconnect_does_not_wait_forever_without_a_client(tunnels):
    _, transport, tunnels = tunnels
    started = time.monotonic()
    tunnels.open(iopub_first=True)
    assert len(transport.calls) == 2
    assert time.monotonic() - started < 2.0
