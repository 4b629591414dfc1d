"""The exception tree: one root, exit codes, and the dict form a proxy's state file keeps."""
import json

import pytest

from ssh_ipykernel import exceptions as exc

ALL = sorted(exc.error_classes().items())


def test_one_root():
    assert all(issubclass(cls, exc.SSHKernelError) for _, cls in ALL)
    assert {"SSHKernelError", "HostKeyError", "AuthenticationError", "HostNotFoundError", "ConnectionTimeoutError",
            "SSHConnectionRefusedError", "ProxyExitedError", "Cancelled"} <= {name for name, _ in ALL}


@pytest.mark.parametrize("name, cls", ALL)
def test_every_error_survives_a_round_trip_through_json(name, cls):
    error = cls(f"{name} happened; do this", host="btest", detail="line 1\nline 2", detail_label="detail")
    again = exc.from_dict(json.loads(json.dumps(error.to_dict())))
    assert type(again) is cls
    assert (again.message, again.host, again.detail, again.exit_code, again.detail_label) == \
           (error.message, "btest", "line 1\nline 2", cls.exit_code, "detail")
    assert str(again) == str(error) == f"{name} happened; do this\n  detail: line 1\n  line 2"


def test_defaults_survive_too():
    error = exc.AuthenticationError("refused", detail="u@h: Permission denied (publickey).")
    data = error.to_dict()
    assert data == {"kind": "AuthenticationError", "exit_code": 25, "message": "refused",
                    "detail": "u@h: Permission denied (publickey).", "detail_label": "ssh said", "host": None}
    again = exc.from_dict(data)
    assert str(again) == "refused\n  ssh said: u@h: Permission denied (publickey)." and again.host is None


def test_an_exit_code_given_wins_over_the_class():
    error = exc.ProxyExitedError("the proxy exited with code -9", exit_code=1)
    assert error.exit_code == 1 and exc.from_dict(error.to_dict()).exit_code == 1
    assert exc.SSHKernelError("x").exit_code == 10 and exc.KernelStartError("x", exit_code=7).exit_code == 7
    assert exc.KernelStartError("y").exit_code == 35  # the class is untouched


def test_an_unknown_kind_keeps_message_and_exit_code():
    again = exc.from_dict({"kind": "FromTheFuture", "exit_code": 47, "message": "new", "detail": ""})
    assert type(again) is exc.SSHKernelError and again.exit_code == 47 and str(again) == "new"
    assert exc.from_dict({}).message == ""  # garbage in: still an error, never a crash
