"""Which kernel the remote agent starts, and how (--remote-kernel, --kernel-cmd, --workdir,
--pre-command), as the proxy, ``check`` and ``add --remote-kernel`` pass it on.

The session client that used to live here is split by job into ``session/``: the remote start
command (startcmd.py), the shipped modules (bundle.py), event framing (events.py) and the
session to the keeper (client.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class LaunchOptions:
    """Which kernel the remote agent starts and how (--remote-kernel, --kernel-cmd, --workdir,
    --pre-command); the default is ipykernel with the --python interpreter."""

    remote_kernel: Optional[str] = None
    kernel_cmd: Optional[Tuple[str, ...]] = None  # argv, ``{connection_file}`` where it goes
    workdir: Optional[str] = None
    pre_command: Optional[str] = None  # one command line for the remote login shell

    def params(self) -> Dict[str, object]:
        """The agent parameters these add (protocol.AgentParams fields: data, never part of a
        command line)."""
        return {
            "remote_kernel": self.remote_kernel,
            "kernel_cmd": list(self.kernel_cmd) if self.kernel_cmd is not None else None,
            "workdir": self.workdir,
        }
