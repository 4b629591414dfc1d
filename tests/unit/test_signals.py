import os
import signal

import pytest

from ssh_ipykernel.exceptions import Cancelled
from ssh_ipykernel.signals import SignalRelay


def test_signals_become_readable_bytes_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with SignalRelay() as relay:
        relay.raise_on_stop = False
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert relay.pending() == [signal.SIGINT, signal.SIGTERM]
        assert relay.pending() == []
    assert signal.getsignal(signal.SIGINT) is before


def test_stop_signals_cancel_start_up():
    with SignalRelay(), pytest.raises(Cancelled, match="SIGHUP"):
        os.kill(os.getpid(), signal.SIGHUP)
