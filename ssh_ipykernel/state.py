"""Local state files: one small JSON file per proxy, for ``ssh-ipykernel status`` and ``manage check``.

Each proxy keeps ``<state dir>/proxy-<kernel id>.json`` up to date (written atomically on every
tunnel state change). A proxy that ends cleanly removes it; one that ends with an error
replaces it with its final record (``record_error``): the same fields plus ``ended`` and
``error``, so that whoever started it (``manage check``) reads why as data (``take_error``).
Readers of running proxies ignore final records, and ``prune()`` removes them after
``KEEP_ERRORS`` seconds. A file whose ``pid`` is no longer running and that has no ``ended``
was left by a proxy killed with SIGKILL: readers ignore it and ``prune()`` removes it.

Fields: pid, host, kernel_id, connection_file, transport, state (connecting, up, reconnecting,
stopping, stopped), reconnects, started (epoch seconds), since (epoch of the last state change),
and once the kernel runs: remote_pid, remote_hostname, remote_connection_file. A final record
adds ended (epoch seconds) and error (``SSHKernelError.to_dict()``: kind, exit_code, message,
detail, detail_label, host).
"""
from __future__ import annotations

import enum
import json
import os
import tempfile
import time
from typing import Dict, List, Optional

from . import exceptions as exc
from .log import redact_text

PREFIX = "proxy-"


class State(enum.Enum):
    """The tunnel's state: the state file's ``state`` and the supervisor's (policy.py)."""

    CONNECTING = "connecting"  # proxy.py's start-up; the supervisor starts UP
    UP = "up"
    RECONNECTING = "reconnecting"
    WAITING_FOR_LOGIN = "waiting for login"  # reconnecting, once a new connection needs a person
    STOPPING = "stopping"
    STOPPED = "stopped"

#: How long a failed proxy's final record is kept for whoever started it (``manage check``
#: takes it at once; nobody else reads it), before any proxy start or ``status`` prunes it.
KEEP_ERRORS = 600.0


def state_dir() -> str:
    """``<jupyter runtime dir>/ssh_ipykernel`` (0700), shared with the control sockets."""
    from jupyter_core.paths import jupyter_runtime_dir

    path = os.path.join(jupyter_runtime_dir(), "ssh_ipykernel")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def state_path(kernel_id: str, directory: Optional[str] = None) -> str:
    return os.path.join(directory or state_dir(), f"{PREFIX}{kernel_id}.json")


def write_state(kernel_id: str, fields: Dict[str, object], directory: Optional[str] = None) -> str:
    """Replace the state file of ``kernel_id`` atomically; return its path."""
    path = state_path(kernel_id, directory)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(fields, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def record_error(kernel_id: str, fields: Dict[str, object], error: exc.SSHKernelError,
                 directory: Optional[str] = None, *, secret: str = "") -> str:
    """Replace the state file of ``kernel_id`` with the proxy's final record: ``fields`` and
    the error it ends with, ``secret`` (the session key) replaced wherever the remote side's
    text might have carried it. Return its path."""
    data = {k: redact_text(v, secret) if isinstance(v, str) else v for k, v in error.to_dict().items()}
    return write_state(kernel_id, {**fields, "ended": time.time(), "error": data}, directory)


def take_error(kernel_id: str, directory: Optional[str] = None) -> Optional[exc.SSHKernelError]:
    """The error the proxy of ``kernel_id`` ended with, its state file removed; None if it left
    no final record (it was killed, or crashed; a file it left then is removed too) or still runs.

    Whoever started the proxy knows the kernel id: it is the connection file's (Jupyter names
    them ``kernel-<id>.json``, a fresh uuid for each kernel), which the proxy got with ``-f``."""
    path = state_path(kernel_id, directory)
    fields = _load(path)
    if fields is None:
        return None
    error = fields.get("error")
    if not isinstance(error, dict) and _running(fields.get("pid")):
        return None  # still running: its file is not ours to remove
    try:
        os.unlink(path)
    except OSError:
        pass
    return exc.from_dict(error) if isinstance(error, dict) else None


def _load(path: str) -> Optional[Dict[str, object]]:
    try:
        with open(path) as f:
            fields = json.load(f)
    except (OSError, ValueError):
        return None  # gone, being replaced, or garbage
    return fields if isinstance(fields, dict) else None


def remove_state(kernel_id: str, directory: Optional[str] = None) -> None:
    try:
        os.unlink(state_path(kernel_id, directory))
    except FileNotFoundError:
        pass


def _running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_states(directory: Optional[str] = None) -> List[Dict[str, object]]:
    """The state of every proxy still running, oldest first."""
    directory = directory or state_dir()
    states = []
    for name in sorted(os.listdir(directory)):
        if not (name.startswith(PREFIX) and name.endswith(".json")):
            continue
        fields = _load(os.path.join(directory, name))
        # A final record's pid may be running again as another process: its own end counts.
        if fields is not None and "ended" not in fields and _running(fields.get("pid")):
            states.append(fields)
    states.sort(key=lambda s: s.get("started") or 0)
    return states


def prune(directory: Optional[str] = None, now: Optional[float] = None) -> List[str]:
    """Remove the state files of proxies that are gone (final records once older than
    ``KEEP_ERRORS``); return their paths."""
    directory = directory or state_dir()
    now = time.time() if now is None else now
    removed = []
    for name in os.listdir(directory):
        if not (name.startswith(PREFIX) and name.endswith(".json")):
            continue
        path = os.path.join(directory, name)
        fields = _load(path) or {}
        ended = fields.get("ended")
        if isinstance(ended, (int, float)):
            gone = abs(now - ended) > KEEP_ERRORS  # abs: a clock set back must not keep it for ever
        else:
            gone = not _running(fields.get("pid"))
        if gone:
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed
