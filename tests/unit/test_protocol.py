"""The remote protocol's vocabulary (remote/protocol.py), checked on both ends, and its dispatch tables."""
import json
import logging
import os

import pytest

from ssh_ipykernel.remote import protocol
from ssh_ipykernel.remote.keeper import Keeper
from ssh_ipykernel.remote.protocol import (EVENT_FIELDS, OP_FIELDS, AgentParams, BootstrapError, Event, Mode, Op,
                                           check_event, event_line, op_line, parse_op)
from ssh_ipykernel.session.events import EventReader
from ssh_ipykernel.supervisor import Supervisor


def constants(cls):
    return {v for k, v in vars(cls).items() if k.isupper()}


def test_the_vocabulary_is_declared_once():
    assert constants(Op) == set(OP_FIELDS)
    assert constants(Event) == set(EVENT_FIELDS)
    assert constants(Mode) == set(protocol.MODES) == set(AgentParams.MODE_FIELDS)


# --- parameters ----------------------------------------------------------------------------------

def test_params_round_trip_through_json():
    p = AgentParams.start(kernel_id="k-1", key="secret", signature_scheme="hmac-sha256", env={"A": "b"},
                          grace=None, client_timeout=30.0, kernel_cmd=("x", "{connection_file}"), workdir="~/w")
    back = AgentParams.from_json(p.to_json().encode())
    assert back == AgentParams.start(kernel_id="k-1", key="secret", signature_scheme="hmac-sha256", env={"A": "b"},
                                     client_timeout=30.0, kernel_cmd=["x", "{connection_file}"], workdir="~/w")
    assert back.mode == Mode.START and back.grace is None and not back.default_kernel


@pytest.mark.parametrize("params, sent", [
    (AgentParams.attach(kernel_id="k", socket="/r/kernel-ssh-k-1.sock"),
     {"protocol": 2, "mode": "attach", "kernel_id": "k", "socket": "/r/kernel-ssh-k-1.sock"}),
    (AgentParams.watch(kernel_id="k", connection_file="/r/kernel-1.json"),
     {"protocol": 2, "mode": "watch", "kernel_id": "k", "connection_file": "/r/kernel-1.json"}),
])
def test_each_mode_sends_only_its_own_parameters(params, sent):
    assert json.loads(params.to_json()) == sent
    assert AgentParams.from_json(params.to_json()) == params


def test_the_key_is_never_in_the_repr():
    assert "s3cret" not in repr(AgentParams.start(kernel_id="k", key="s3cret"))


@pytest.mark.parametrize("line, words", [
    (b"{", "not valid JSON"),
    (b"[]", "JSON object"),
    (b'{"protocol": 2, "kernel_id": "k", "detonate": 1}', "unknown parameters: detonate"),
    (b'{"protocol": 2, "kernel_id": "k", "grace": true}', "grace"),
    (b'{"protocol": 2, "kernel_id": "k", "signature_scheme": 5}', "signature_scheme"),
    (b'{"protocol": 2, "kernel_id": "k", "mode": "watch"}', "connection_file"),
])
def test_malformed_params_are_refused_with_bad_params(line, words):
    with pytest.raises(BootstrapError) as e:
        AgentParams.from_json(line)
    assert e.value.code == "bad_params" and words in e.value.message
    assert e.value.exit_code == protocol.EXIT_BAD_PARAMS


def test_unknown_params_are_a_programming_error_locally():
    with pytest.raises(TypeError):
        AgentParams(kernel=1)


# --- ops -----------------------------------------------------------------------------------------

def test_ops_round_trip():
    assert parse_op(op_line(Op.REPLACED, key_sha256="ab")) == {"op": "replaced", "key_sha256": "ab"}
    assert parse_op(op_line(Op.PING)) == {"op": "ping"}


@pytest.mark.parametrize("line, words", [
    (b'{"op": "detonate"}', "unknown op 'detonate'"),
    (b'{"op": "replaced"}', "no key_sha256"),
    (b'{"op": "replaced", "key_sha256": 3}', "key_sha256 is 3"),
    (b'"ping"', "not a JSON object"),
    (b"ping", "not valid JSON"),
])
def test_unknown_or_malformed_ops_are_refused(line, words):
    with pytest.raises(BootstrapError) as e:
        parse_op(line)
    assert e.value.code == "bad_op" and words in e.value.message


def test_the_keeper_has_a_handler_for_every_op():
    assert set(Keeper.HANDLERS) == set(OP_FIELDS)


# --- events --------------------------------------------------------------------------------------

@pytest.mark.parametrize("event", [
    {"event": "ready", "pid": 1, "ports": {"shell_port": 5}},
    {"event": "ready", "pid": 0, "ports": {}},
    {"event": "error", "code": "no_kernel", "message": "m"},
    {"event": "exited", "returncode": None, "reason": "ports_closed"},
    {"event": "exited", "returncode": -9, "reason": ""},
    {"event": "pong"},
    {"event": "log", "text": "x"},
])
def test_well_formed_events_pass(event):
    assert check_event(json.loads(event_line(event.pop("event"), **event))) is not None


@pytest.mark.parametrize("event, words", [
    ({"event": "surprise"}, "unknown event"),
    ({"event": "ready", "pid": "1", "ports": {}}, "pid"),
    ({"event": "ready", "pid": 1, "ports": {"shell_port": "5"}}, "ports"),
    ({"event": "ready", "pid": 1}, "no ports"),
    ({"event": "exited", "returncode": True, "reason": None}, "returncode"),
    ({"event": "log"}, "no text"),
    (["ready"], "not a JSON object"),
])
def test_malformed_events_are_refused(event, words):
    with pytest.raises(BootstrapError) as e:
        check_event(event)
    assert e.value.code == "bad_event" and words in e.value.message


def test_the_event_reader_drops_noise_and_turns_a_broken_ready_into_an_error(caplog):
    r, w = os.pipe()
    try:
        reader = EventReader(r)
        os.write(w, b'motd from a login script\n{"event": "log", "text": "a"}\n{"event": "log"}\n'
                    b'{"event": "ready", "pid": "x", "ports": {}}\n{"event": "po')
        with caplog.at_level(logging.WARNING):
            assert reader.read() is False
        events = reader.take()
        assert events[0] == {"event": "log", "text": "a"}
        assert events[1]["event"] == "error" and events[1]["code"] == "bad_event" and "pid" in events[1]["message"]
        assert len(events) == 2 and reader.pending == []
        os.write(w, b'ng"}\n')
        reader.read()
        assert reader.take() == [{"event": "pong"}]
        os.close(w)
        w = -1
        assert reader.read() is True
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_the_supervisor_handles_the_events_it_must():
    assert {Event.LOG, Event.EXITED, Event.PONG} <= set(Supervisor._EVENT_HANDLERS)
    assert set(Supervisor._EVENT_HANDLERS) <= set(EVENT_FIELDS)
