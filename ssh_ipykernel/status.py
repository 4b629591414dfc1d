"""``ssh-ipykernel status``: the SSH kernels running from this machine, from the proxies' state
files, and the warm pools on the hosts they used, from the hosts themselves.

The proxies write the files (state.py); this only reads them. Files of proxies that are gone
(killed with SIGKILL, so they could not remove their own) are pruned on the way. The warm pools
live on the remote hosts: the proxies' pool records say which hosts had one and when it is
expected to end; each such host is asked (remotepools.py) over its shared SSH connection if
one is up, and only then.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from . import state

if TYPE_CHECKING:
    from .remotepools import HostPools, Target
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


# -- warm pools ---------------------------------------------------------------------------------
def pool_targets(records: List[Dict[str, object]]) -> "List[Target]":
    """The hosts to ask, one per shared connection (host as written, ssh config), from the pool
    records: the python of the newest record runs the lister, every runtime dir is searched."""
    from .remotepools import Target

    hosts: Dict[Tuple[str, Optional[str], bool], List[Dict[str, object]]] = {}
    for r in sorted(records, key=lambda r: float(r.get("started") or 0)):  # type: ignore[arg-type]
        key = (str(r.get("host")), r.get("ssh_config") or None, r.get("sudo") is True)
        hosts.setdefault(key, []).append(r)  # type: ignore[arg-type]
    return [Target(host=host, ssh_config=config, python=str(rs[-1].get("python") or "python3"),
                   runtime_dirs=tuple(sorted({str(r["runtime_dir"]) for r in rs if r.get("runtime_dir")})),
                   sudo=sudo, pre_command=rs[-1].get("pre_command") or None)  # type: ignore[arg-type]
            for (host, config, sudo), rs in hosts.items()]


def warm_pools(directory: Optional[str] = None, now: Optional[float] = None,
               ask: "Optional[Callable[[Sequence[Target]], List[HostPools]]]" = None) -> List[Dict[str, object]]:
    """The warm pools on the hosts this machine's kernels used: one dict per pool a host
    reported (``asked`` True: pid, python, rss_mb, kernels, kernel_pids, state, ends_in, ends_at,
    ...), and for a host that could not be asked one per pool it is expected to have (``asked``
    False, ``reason``, ``running``: a kernel of ours still uses it, ``expected_end``). Records of
    pools their host says are gone are removed."""
    if ask is None:
        from .remotepools import ask_hosts as ask
    now = time.time() if now is None else now
    records = state.pool_records(directory)
    targets = pool_targets(records)
    entries: List[Dict[str, object]] = []
    seen = set()  # (machine, pid): one host reached under two names (two connections)
    for answer in ask(targets):
        target = answer.target
        mine = [r for r in records if (r.get("host"), r.get("ssh_config") or None, r.get("sudo") is True)
                == (target.host, target.ssh_config, target.sudo)]
        base = {"host": target.host, "ssh_config": target.ssh_config}
        if answer.pools is None:
            entries += _expected_pools(base, mine, answer.reason, now)
            continue
        for pool in answer.pools:
            if (answer.hostname, pool.get("pid")) in seen:
                continue
            seen.add((answer.hostname, pool.get("pid")))
            entries.append(dict(base, **_reported_pool(pool, now), asked=True, remote_hostname=answer.hostname))
        alive = {p.get("socket") for p in answer.pools}
        for r in mine:
            if r.get("socket") not in alive and not r.get("running"):
                state.remove_pool_record(str(r.get("kernel_id")), directory)  # its pool has ended
    return entries


def _reported_pool(pool: Dict[str, object], now: float) -> Dict[str, object]:
    rss = pool.get("rss_kb")
    kernels = [k for k in pool.get("kernels") or [] if isinstance(k, int)]  # type: ignore[attr-defined]
    ends_in = pool.get("ends_in")
    serving = pool.get("state", "serving") == "serving"
    return {
        "pid": pool.get("pid"), "python": pool.get("python"),
        "rss_mb": round(rss / 1024, 1) if isinstance(rss, (int, float)) else None,
        "kernels": len(kernels), "kernel_pids": kernels, "state": pool.get("state", "serving"),
        "ends_in": ends_in if serving and isinstance(ends_in, (int, float)) else None,
        "ends_at": now + ends_in if serving and isinstance(ends_in, (int, float)) else None,
        "idle": pool.get("idle"), "socket": pool.get("socket"), "stale": pool.get("stale") or "",
    }


def _expected_pools(base: Dict[str, object], records: List[Dict[str, object]], reason: str,
                    now: float) -> List[Dict[str, object]]:
    """What the records say of the pools of a host that was not asked: one entry per socket."""
    if reason.startswith("not connected") and records and all(r.get("transport") == "paramiko" for r in records):
        reason = "not shown for paramiko (its connections are the kernels' own; no shared one to ask through)"
    by_socket: Dict[str, List[Dict[str, object]]] = {}
    for r in records:
        by_socket.setdefault(str(r.get("socket")), []).append(r)
    entries = []
    for socket, rs in by_socket.items():
        running = any(r.get("running") for r in rs)
        ends = [state.pool_ends(r) for r in rs]
        known = None if running or None in ends else max(e for e in ends if e is not None)
        entries.append(dict(base, asked=False, reason=reason, socket=socket, running=running,
                            expected_end=known, python=rs[-1].get("python"), pid=None))
    return entries


def clock(epoch: float, now: Optional[float] = None) -> str:
    """A time of day for the table: 18:42, or 2026-12-03 18:42 if not within a day from now."""
    now = time.time() if now is None else now
    return time.strftime("%H:%M" if abs(epoch - now) < 86400 else "%Y-%m-%d %H:%M", time.localtime(epoch))


def pool_ends_text(pool: Dict[str, object], now: Optional[float] = None) -> str:
    """The ENDS column: "in 7 min (18:42)", "while kernels run", "with its last kernel (retired)"."""
    state_ = pool.get("state")
    if state_ == "restart server":
        return "--warm after the host's last kernel"
    if state_ == "retired":
        return "with its last kernel (retired)" if pool.get("kernels") else "now (retired)"
    if state_ == "starting":
        return "? (starting)"
    ends_in, ends_at = pool.get("ends_in"), pool.get("ends_at")
    if not isinstance(ends_in, (int, float)) or not isinstance(ends_at, (int, float)):
        return "while kernels run"
    return f"in {format_duration(ends_in)} ({clock(ends_at, now)})"


def pool_rows(pools: List[Dict[str, object]], now: Optional[float] = None) -> List[List[str]]:
    """Rows of the warm pools table (the pools a host reported): host, pool pid, python, RSS,
    kernels, ends."""
    rows = []
    for p in pools:
        if not p.get("asked"):
            continue
        host = str(p.get("host") or "?")
        remote = p.get("remote_hostname")
        if remote and remote != host:
            host += f" ({remote})"
        rss = p.get("rss_mb")
        server = p.get("state") == "restart server"  # an agent server (remote/agentserver.py)
        rows.append([host, str(p.get("pid")), str(p.get("python") or "?") + (" (restart server)" if server else ""),
                     f"{rss:.0f} MB" if isinstance(rss, (int, float)) else "?",
                     "-" if server else str(p.get("kernels", 0)), pool_ends_text(p, now)])
    return rows


def unasked_lines(pools: List[Dict[str, object]], now: Optional[float] = None) -> List[str]:
    """One line per host that was not asked: why, and what its records say of its pools
    ("btest: not connected, pool expected to end by 18:42")."""
    hosts: Dict[str, List[Dict[str, object]]] = {}
    for p in pools:
        if not p.get("asked"):
            hosts.setdefault(str(p.get("host")), []).append(p)
    lines = []
    for host, ps in hosts.items():
        reason = str(ps[0].get("reason") or "not asked")
        which = "pool" if len(ps) == 1 else f"{len(ps)} pools"
        ends = [p.get("expected_end") for p in ps]
        if any(p.get("running") for p in ps):
            fate = f"{which} kept while its kernels run"
        elif None in ends:
            fate = f"{which}: end not known (a kernel's proxy was killed)"
        else:
            last = max(e for e in ends if isinstance(e, (int, float)))
            now_ = time.time() if now is None else now
            verb = "expected to end by" if last > now_ else "expected to have ended at"
            fate = f"{which} {verb} {clock(last, now_)}"
        lines.append(f"{host}: {reason}, {fate}")
    return lines
