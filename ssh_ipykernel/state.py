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

Warm pools outlive the proxies whose kernels they forked, on the remote host: so that ``status``
knows which hosts to ask about them (and what to say of a host it cannot ask), a proxy whose
kernel was forked by a pool also keeps ``<state dir>/pool-<kernel id>.json`` (``record_pool``):
host, ssh_config, transport, the remote python (and how it was started: sudo, pre_command),
runtime dir and pool socket, --warm (seconds),
pid, started; and ``ended`` once the proxy has ended (``end_pool_record``), from when the pool
has --warm seconds to live if no other kernel uses it. ``prune()`` removes such a record once
that time has passed (a record of a proxy killed with SIGKILL, which has no ``ended``, after
``KEEP_UNKNOWN_POOLS``); ``status`` also removes those of pools their host says are gone.
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
POOL_PREFIX = "pool-"


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
#: A pool record without an end (its proxy was killed with SIGKILL; its kernel ran on for its
#: grace period, so nobody knows when the pool ends) is kept this long.
KEEP_UNKNOWN_POOLS = 86400.0
#: A pool is expected gone this long after its --warm time (it checks once a second; clocks).
POOL_END_MARGIN = 60.0


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
    return _write(state_path(kernel_id, directory), fields)


def _write(path: str, fields: Dict[str, object]) -> str:
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


def pool_record_path(kernel_id: str, directory: Optional[str] = None) -> str:
    return os.path.join(directory or state_dir(), f"{POOL_PREFIX}{kernel_id}.json")


def record_pool(kernel_id: str, fields: Dict[str, object], directory: Optional[str] = None) -> str:
    """Keep (replace) the pool record of ``kernel_id``'s proxy: ``fields`` as in the module
    docstring, without ``ended``. Return its path."""
    return _write(pool_record_path(kernel_id, directory), {k: v for k, v in fields.items() if k != "ended"})


def load_pool_record(kernel_id: str, directory: Optional[str] = None) -> Optional[Dict[str, object]]:
    """``kernel_id``'s pool record, if it has one."""
    return _load(pool_record_path(kernel_id, directory))


def end_pool_record(kernel_id: str, directory: Optional[str] = None, now: Optional[float] = None) -> None:
    """Note in ``kernel_id``'s pool record (if it has one) that its proxy, and so its kernel, ended."""
    path = pool_record_path(kernel_id, directory)
    fields = _load(path)
    if fields is not None:
        _write(path, {**fields, "ended": time.time() if now is None else now})


def pool_ends(fields: Dict[str, object]) -> Optional[float]:
    """When the pool of a record is expected to end if no other kernel used it (epoch seconds);
    None while its proxy runs, or if nobody knows (no ``ended``, or no --warm)."""
    ended, warm = fields.get("ended"), fields.get("warm")
    if isinstance(ended, (int, float)) and isinstance(warm, (int, float)):
        return float(ended) + float(warm)
    return None


def pool_records(directory: Optional[str] = None) -> List[Dict[str, object]]:
    """Every pool record, each with ``running``: whether its proxy still runs (and so the pool
    surely does too, with its kernel)."""
    directory = directory or state_dir()
    records = []
    for name in sorted(os.listdir(directory)):
        if name.startswith(POOL_PREFIX) and name.endswith(".json"):
            fields = _load(os.path.join(directory, name))
            if fields is not None:
                fields["running"] = "ended" not in fields and _running(fields.get("pid"))
                records.append(fields)
    return records


def remove_pool_record(kernel_id: str, directory: Optional[str] = None) -> None:
    try:
        os.unlink(pool_record_path(kernel_id, directory))
    except FileNotFoundError:
        pass


def _pool_record_gone(fields: Dict[str, object], now: float) -> bool:
    ends = pool_ends(fields)
    if ends is not None:
        return now > ends + POOL_END_MARGIN
    if "ended" not in fields and _running(fields.get("pid")):
        return False
    started = fields.get("started")
    return not isinstance(started, (int, float)) or abs(now - started) > KEEP_UNKNOWN_POOLS


def prune(directory: Optional[str] = None, now: Optional[float] = None) -> List[str]:
    """Remove the state files of proxies that are gone (final records once older than
    ``KEEP_ERRORS``) and the pool records of pools that must have ended; return their paths."""
    directory = directory or state_dir()
    now = time.time() if now is None else now
    removed = []
    for name in os.listdir(directory):
        if name.startswith(POOL_PREFIX) and name.endswith(".json"):
            path = os.path.join(directory, name)
            if _pool_record_gone(_load(path) or {}, now):
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass
            continue
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
