"""Ask the remote what it can run, without starting a kernel (remote/probe.py, run over SSH).

Used by ``manage check`` (python, packages, connection file, kernel command steps) and by
``manage add --remote-kernel`` (the remote kernelspec's language, display name, interrupt mode
and logos go into the local kernelspec).
"""
from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from . import exceptions as exc
from .options import DEFAULT_TIMEOUT, LaunchOptions
from .remote import protocol
from .remote_errors import error_for_exit
from .session.bundle import agent_stdin, probe_source
from .session.events import EventReader
from .session.startcmd import StartCommand, start_command
from .transport.base import Transport

@dataclass
class ProbeResult:
    """The remote's answer (see remote/probe.py for the fields) and how long the round trip took."""

    data: Dict[str, Any]
    seconds: float = 0.0
    stderr: str = ""
    resources: Dict[str, bytes] = field(default_factory=dict)

    def part(self, name: str) -> Dict[str, Any]:
        value = self.data.get(name)
        return value if isinstance(value, dict) else {}


def error_for_part(part: Dict[str, Any], *, host: str, python: Optional[str], pre_command: Optional[str]) -> exc.SSHKernelError:
    """The same error (and advice) the proxy would give for a failed part of the probe."""
    code = str(part.get("code", "kernel_start"))
    event = {"code": code, "message": part.get("message", "")}
    return error_for_exit(protocol.ERROR_EXIT_CODES.get(code), "", host=host, python=python, event=event,
                          pre_command=pre_command)


def run_probe(
    transport: Transport,
    *,
    python: Optional[str],
    sudo: bool = False,
    env: Optional[Dict[str, str]] = None,
    launch: Optional[LaunchOptions] = None,
    timeout: float = DEFAULT_TIMEOUT,
    command: Optional[StartCommand] = None,
) -> ProbeResult:
    """Run the probe over ``transport`` (connected); raise the proxy's error if it cannot run.

    ``command`` is how the remote starts python (default: the login shell with ``sudo`` and the
    pre-command), as for the kernel's own sessions."""
    import base64
    import time

    launch = launch or LaunchOptions()
    host = transport.host.label
    params = protocol.AgentParams.start(kernel_id="check", env=dict(env or {}), **launch.params())
    command = command or start_command(sudo=sudo, pre_command=launch.pre_command)
    started = time.monotonic()
    proc = transport.start_command(command.build(python))
    try:
        out, err = proc.communicate(agent_stdin(params, probe_source()), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        msg = f"the remote python on {host} did not answer within {timeout:.0f} s; raise --timeout if it is slow"
        raise exc.KernelStartError(msg, host=host) from None
    seconds = time.monotonic() - started
    stderr = err.decode("utf-8", "replace")
    reader = EventReader(-1, chatter=logging.DEBUG)
    reader.feed(out + b"\n")  # lines that are not events (a login script's chatter) are skipped
    events = reader.take()
    probe = next((e for e in events if e.get("event") == protocol.Event.PROBE), None)
    if probe is None:
        error = next((e for e in events if e.get("event") == protocol.Event.ERROR), None)
        raise error_for_exit(proc.returncode, stderr, host=host, python=python, event=error,
                             pre_command=launch.pre_command)
    resources = {}
    for name, data in (probe.get("kernel") or {}).pop("resources", {}).items():
        try:
            resources[name] = base64.b64decode(data)
        except ValueError:
            continue
    return ProbeResult(data=probe, seconds=seconds, stderr=stderr, resources=resources)
