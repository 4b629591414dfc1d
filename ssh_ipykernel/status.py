"""``ssh-ipykernel status``: the SSH kernels running from this machine, from the proxies' state files.

The proxies write the files (state.py); this only reads them. Files of proxies that are gone
(killed with SIGKILL, so they could not remove their own) are pruned on the way.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Dict, List, Optional

from . import state

if TYPE_CHECKING:
    from .transport.login import LoginRecord

from .options import format_duration as written_duration

def running_kernels(directory: Optional[str] = None, now: Optional[float] = None) -> List[Dict[str, object]]:
    """One dict per running proxy (state.py's fields), plus ``uptime`` and ``in_state`` seconds."""
    state.prune(directory)
    now = time.time() if now is None else now
    kernels = []
    for fields in state.read_states(directory):
        entry = dict(fields)
        started, since = fields.get("started"), fields.get("since")
        entry["uptime"] = now - started if isinstance(started, (int, float)) else None
        entry["in_state"] = now - since if isinstance(since, (int, float)) else None
        kernels.append(entry)
    return kernels


def format_duration(seconds: Optional[float]) -> str:
    """3 s, 12 min, 1 h 02 min, 2 d 03 h."""
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600:02d} h"


def slurm_text(k: Dict[str, object], now: Optional[float] = None) -> str:
    """A SLURM kernel's job for the table: ``SLURM job 12 RUNNING on node1, 55 min left``."""
    now = time.time() if now is None else now
    ends = k.get("slurm_ends")
    left = f"{format_duration(ends - now)} left" if isinstance(ends, (int, float)) else "no time limit"
    # The proxy writes its state file while the kernel is up: its job is running (the tunnel
    # column says when the proxy is reconnecting to it).
    return f"SLURM job {k.get('slurm_job')} RUNNING on {k.get('slurm_node') or '?'}, {left}"


def table_rows(kernels: List[Dict[str, object]]) -> List[List[str]]:
    """Rows for the status table: host, kernel id, remote pid (and "(warm)" for a kernel forked
    by the host's warm pool), uptime, tunnel, reconnects, proxy pid."""
    rows = []
    for k in kernels:
        host = str(k.get("host") or "?")
        remote_host = k.get("remote_hostname")
        if k.get("slurm_job"):
            host += f" ({slurm_text(k)})"
        elif remote_host and remote_host != host:
            host += f" ({remote_host})"
        tunnel = str(k.get("state") or "?")
        if tunnel != "up" and k.get("in_state") is not None:
            tunnel += f" for {format_duration(k['in_state'])}"  # type: ignore[arg-type]
        remote_pid = k.get("remote_pid")
        shown_pid = str(remote_pid) if remote_pid else "-"
        if remote_pid and k.get("warm") is True:
            shown_pid += " (warm)"  # forked by the host's warm pool (remote/warm.py)
        rows.append([host, str(k.get("kernel_id") or "?"), shown_pid,
                     format_duration(k.get("uptime")), tunnel,  # type: ignore[arg-type]
                     str(k.get("reconnects") or 0), str(k.get("pid"))])
    return rows


#: After the kernels table: where the warm pools are (they live on the hosts, not here).
WARM_NOTE = ("Warm pools (ipykernel imported, ready to fork the next kernel) stay on each host for --warm "
             "(default 10m) after its last kernel; there: ps -u $USER -o pid,rss,args | grep ssh_ipykernel-warm-pool")


def logins(directory: Optional[str] = None) -> "List[LoginRecord]":
    """The hosts logged in with ``ssh-ipykernel login`` whose connection is still up."""
    from .transport.login import logged_in
    from .transport.openssh import control_dir

    return logged_in(directory or control_dir())


def login_rows(records: "List[LoginRecord]", now: Optional[float] = None) -> List[List[str]]:
    """Rows for the logins table: host, since (local time and how long ago), ssh pid, how long it stays."""
    now = time.time() if now is None else now
    rows = []
    for r in records:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started))
        stays = "until logout" if r.persist is None else f"{written_duration(r.persist)} after its last kernel"
        host = r.host if not r.ssh_config else f"{r.host} (-F {r.ssh_config})"
        rows.append([host, f"{since} ({format_duration(now - r.started)} ago)", str(r.pid), stays])
    return rows
