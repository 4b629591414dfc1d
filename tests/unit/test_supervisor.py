"""Pure parts of the tunnel supervisor (the fault behaviour is in tests/integration/test_reconnect.py)."""
import logging
import socket
import time

from ssh_ipykernel.signals import SignalRelay
from ssh_ipykernel.supervisor import Supervisor


class _Stub:
    """Just enough of a transport/kernel/tunnels for the supervisor's constructor."""

    forwards = []

    def probe_address(self):
        return None


def supervisor(signals):
    stub = _Stub()
    return Supervisor(kernel=stub, transport=stub, tunnels=stub, new_transport=lambda t: stub,
                      signals=signals, log=logging.LoggerAdapter(logging.getLogger("t"), {}),
                      secret="s", grace=60, client_timeout=30, attach_timeout=10)


def test_probe_returns_as_soon_as_the_host_answers_or_refuses(monkeypatch):
    """Answered and refused both mean "the host is there" (None at once); a host that does not
    answer keeps the probe waiting until PROBE_MAX_WAIT, so a quick None is not a timeout."""
    from ssh_ipykernel import reachability

    monkeypatch.setattr(reachability, "PROBE_MAX_WAIT", 2.0)
    with SignalRelay() as signals, socket.socket() as listener, socket.socket() as silent:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        s = supervisor(signals)
        t0 = time.monotonic()
        assert s._wait_reachable(("127.0.0.1", port)) is None
        answered = time.monotonic() - t0
        listener.settimeout(1)
        listener.accept()[0].close()  # the probe really connected

        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
        t0 = time.monotonic()
        assert s._wait_reachable(("127.0.0.1", closed_port)) is None  # refused: sshd down, host up
        refused = time.monotonic() - t0

        # A listener whose queue is full drops further SYNs without a word: no answer at all.
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        fillers = [socket.create_connection(silent.getsockname(), timeout=1)]  # queue of one: full
        t0 = time.monotonic()
        assert s._wait_reachable(silent.getsockname()) is None
        unanswered = time.monotonic() - t0
        for f in fillers:
            f.close()
    assert answered < 0.5 and refused < 0.5, (answered, refused)
    assert 1.9 < unanswered < 4, unanswered