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


def test_probe_returns_as_soon_as_the_host_answers_or_refuses():
    with SignalRelay() as signals, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        s = supervisor(signals)
        t0 = time.monotonic()
        assert s._wait_reachable(("127.0.0.1", port)) is None
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
        assert s._wait_reachable(("127.0.0.1", closed_port)) is None  # refused: sshd down, host up
        assert time.monotonic() - t0 < 1.0


def test_a_kernel_that_died_is_the_supervisors_error_and_exit_code(caplog):
    from ssh_ipykernel import exceptions as exc

    with SignalRelay() as signals:
        s = supervisor(signals)
        s.kernel.host = "btest"
        assert s._exited({"event": "exited", "returncode": 0, "reason": None}) == 0 and s.error is None
        with caplog.at_level(logging.ERROR, logger="t"):
            assert s._exited({"event": "exited", "returncode": -9, "reason": "died"}) == 1
    assert type(s.error) is exc.KernelDiedError and s.error.exit_code == 1 and s.error.host == "btest"
    assert s.error.message == "the remote kernel died (killed by signal 9); exiting so that Jupyter restarts it"
    assert caplog.messages[-1] == "stopped: " + s.error.message  # the log line is unchanged
