"""The proxy's own listeners (transport/forwarder.py), without a master: binding and releasing.

Relaying through a real master is covered by the integration tests (test_shared.py).
"""
import socket

import pytest
from testutil import free_port

from ssh_ipykernel.transport.base import Forward
from ssh_ipykernel.transport.forwarder import BindError, Forwarder


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_busy_port_is_named_and_nothing_stays_bound(tmp_path):
    ports = [free_port() for _ in range(3)]
    holder = socket.socket()
    holder.bind(("127.0.0.1", ports[1]))
    holder.listen()
    forwarder = Forwarder(str(tmp_path / "cm"))
    try:
        with pytest.raises(BindError) as info:
            forwarder.add([Forward(p, 1) for p in ports])
        assert info.value.busy == [ports[1]]
        assert refused(ports[0]), "the listener opened before the failure was not closed"
    finally:
        forwarder.close()
        holder.close()


def test_remove_and_close_release_the_ports(tmp_path):
    ports = [free_port() for _ in range(2)]
    forwards = [Forward(p, 1) for p in ports]
    forwarder = Forwarder(str(tmp_path / "cm"))
    forwarder.add(forwards)
    assert sorted(f.local_port for f in forwarder.listening()) == sorted(ports)
    # Without a master a connection is accepted, then closed (the client would retry).
    with socket.create_connection(("127.0.0.1", ports[0]), timeout=5) as conn:
        conn.settimeout(5)
        assert conn.recv(1) == b""
    forwarder.remove(forwards[:1])
    assert refused(ports[0]) and not refused(ports[1])
    forwarder.close()
    forwarder.close()
    assert refused(ports[1])


def test_accepted_connections_have_nagle_off():
    """What the master relays must not wait for ACKs: Nagle plus the client's delayed ACK held
    ~1 in 3 ZeroMQ messages back by ~40 ms (execute round trip p90 46 ms instead of 9 ms)."""
    from ssh_ipykernel.transport.forwarder import _accept_all

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    client = socket.create_connection(listener.getsockname())
    try:
        accepted = _accept_all(listener)  # the loopback handshake is complete: it is in the backlog
        assert len(accepted) == 1
        assert accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        accepted[0].close()
    finally:
        client.close()
        listener.close()


def test_reserved_ports_are_held_from_the_start_and_listened_on_later():
    """The proxy binds Jupyter's ports as soon as it has read the connection file: nothing else
    can take one while it logs in and starts the kernel; the forward listens on that socket."""
    import errno
    import socket

    from ssh_ipykernel.transport import forwarder
    from ssh_ipykernel.transport.base import Forward

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        assert forwarder.reserve("127.0.0.1", [port]) == []
        with socket.socket() as other, pytest.raises(OSError) as info:
            other.bind(("127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE
        with socket.socket() as client:  # bound, not listening: refused, and ZeroMQ retries
            assert client.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
        sock = forwarder._listen(Forward(local_port=port, remote_port=1, local_host="127.0.0.1"))
        with sock, socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        forwarder.release_reserved()
