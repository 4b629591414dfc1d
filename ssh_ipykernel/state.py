"""Local state files: one small JSON file per running proxy, for ``ssh-ipykernel status``.

Each proxy keeps ``<state dir>/proxy-<kernel id>.json`` up to date (written atomically on every
tunnel state change) and removes it when it exits. A file whose ``pid`` is no longer running
was left by a proxy killed with SIGKILL: readers ignore it and ``prune()`` removes it.

Fields: pid, host, kernel_id, connection_file, transport, state (connecting, up, reconnecting,
stopping, stopped), reconnects, started (epoch seconds), since (epoch of the last state change),
and once the kernel runs: remote_pid, remote_hostname, remote_connection_file.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, List, Optional

PREFIX = "proxy-"


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
        try:
            with open(os.path.join(directory, name)) as f:
                fields = json.load(f)
        except (OSError, ValueError):
            continue  # being replaced, or garbage: not a running proxy we can describe
        if isinstance(fields, dict) and _running(fields.get("pid")):
            states.append(fields)
    states.sort(key=lambda s: s.get("started") or 0)
    return states


def prune(directory: Optional[str] = None) -> List[str]:
    """Remove the state files of proxies that are gone; return their paths."""
    directory = directory or state_dir()
    removed = []
    for name in os.listdir(directory):
        if not (name.startswith(PREFIX) and name.endswith(".json")):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                pid = json.load(f).get("pid")
        except (OSError, ValueError, AttributeError):
            pid = None
        if not _running(pid):
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return removed
