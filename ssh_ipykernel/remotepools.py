"""Ask hosts about their warm pools (remote/pools.py, run over SSH), for ``ssh-ipykernel status``.

Only through a shared OpenSSH connection that is already up (``OpenSSHTransport.join_existing``):
``status`` never logs in, never prompts, and a session that finds the connection gone cannot
make one of its own. The paramiko transport has no connection outside the proxy that holds it,
so a host reached only with paramiko is not asked. Hosts are asked in parallel, each within
``ASK_TIMEOUT`` seconds; the answer is one ``pools`` event (the pools' facts, see
remote/warmpool.py: Pool.info).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import exceptions as exc
from .remote import protocol

log = logging.getLogger(__name__)

#: How long a host may take to answer (a mux session, a python start, a few socket requests).
ASK_TIMEOUT = 5.0
#: How long the shared connection's master may take to answer its control socket.
JOIN_TIMEOUT = 1.0
#: The reason given for a host with no shared connection up (status says what it expects).
NOT_CONNECTED = "not connected"


@dataclass(frozen=True)
class Target:
    """A host to ask: as written in the kernelspec (its shared connection's identity, with the
    ssh config), a python there to run the lister started as the kernels' was (``--sudo``: the
    pools are root's; ``--pre-command``: what that python may need), where the pools' sockets are."""

    host: str
    ssh_config: Optional[str]
    python: str
    runtime_dirs: Tuple[str, ...] = ()
    sudo: bool = False
    pre_command: Optional[str] = None


@dataclass
class HostPools:
    """A host's answer: ``pools`` (Pool.info dicts plus ``state``) if it was asked, else None
    and ``reason`` (``connected`` False: no shared connection is up)."""

    target: Target
    pools: Optional[List[Dict[str, Any]]] = None
    connected: bool = False
    reason: str = ""
    hostname: str = ""
    seconds: float = 0.0


def ask_host(target: Target, timeout: float = ASK_TIMEOUT) -> HostPools:
    """The warm pools on ``target``'s host, asked over its shared connection if one is up."""
    from .hosts import parse_host
    from .session.bundle import agent_stdin, pools_source
    from .session.events import EventReader
    from .session.startcmd import start_command
    from .transport.base import TransportOptions

    started = time.monotonic()
    if shutil.which("ssh") is None:
        return HostPools(target, reason=NOT_CONNECTED + " (no ssh client here)")
    try:
        from .transport.openssh import OpenSSHTransport

        transport = OpenSSHTransport(parse_host(target.host),
                                     TransportOptions(ssh_config=target.ssh_config, connect_timeout=timeout))
    except exc.SSHKernelError as e:  # no ssh client here, a host string we refuse
        return HostPools(target, reason=str(e).splitlines()[0])
    try:
        if not transport.join_existing(JOIN_TIMEOUT):
            return HostPools(target, reason=NOT_CONNECTED)
        params = protocol.AgentParams.pools(runtime_dirs=list(target.runtime_dirs))
        command = start_command(sudo=target.sudo, pre_command=target.pre_command)
        proc = transport.start_command(command.build(target.python))
        try:
            out, err = proc.communicate(agent_stdin(params, pools_source()), timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return HostPools(target, connected=True, reason=f"no answer within {timeout:.0f} s")
        reader = EventReader(-1, chatter=logging.DEBUG)
        reader.feed(out + b"\n")  # a login script's chatter on stdout is skipped
        events = reader.take()
        answer = next((e for e in events if e.get("event") == protocol.Event.POOLS), None)
        if answer is None:
            return HostPools(target, connected=True, reason=_failure(proc.returncode, err, target, events))
        pools: List[Dict[str, Any]] = [p for p in answer["pools"] if isinstance(p, dict)]  # type: ignore[union-attr]
        return HostPools(target, pools=pools, connected=True, hostname=str(answer.get("hostname") or ""),
                         seconds=time.monotonic() - started)
    finally:
        transport.close()


def _failure(returncode: Optional[int], stderr: bytes, target: Target, events: List[Dict[str, object]]) -> str:
    """Why the lister gave no answer, in one line."""
    from .remote_errors import error_for_exit

    if returncode == 255:  # ssh's own: the shared connection went away (or refused the session)
        return "the shared connection did not take the request"
    error = next((e for e in events if e.get("event") == protocol.Event.ERROR), None)
    text = str(error_for_exit(returncode, stderr.decode("utf-8", "replace"), host=target.host,
                              python=target.python, event=error))
    return f"could not list them: {text.splitlines()[0]}"


def ask_hosts(targets: Sequence[Target], timeout: float = ASK_TIMEOUT) -> List[HostPools]:
    """``ask_host`` for each target, all at once; answers in the targets' order."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(targets)), thread_name_prefix="pools") as pool:
        return list(pool.map(lambda t: ask_host(t, timeout), targets))
