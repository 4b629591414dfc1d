"""The remote modules as the program the remote python runs, and what goes on its stdin.

The session's stdin carries ``<len>\\n<program>`` for the fixed one-line loader (LOADER), then
one JSON line of parameters (protocol.AgentParams: the key travels here, never on a command
line), then the session's commands. The program is remote/loader.py followed by a call of its
``run`` with the sources of the modules the session needs: each keeps its own name and file
name on the remote (see remote/loader.py).
"""
from __future__ import annotations

import functools
import os
from typing import Dict, Mapping, Optional, Tuple, Union

from ..remote import loader, protocol

# Runs first on the remote: refuse Python < 3.8 with a sentinel code, then read exactly the
# announced number of bytes of program from stdin and run it as __main__. No single quotes:
# it travels inside single quotes.
LOADER = (
    "import sys;sys.version_info<(3,8) and sys.exit(%d);b=sys.stdin.buffer;"
    'exec(compile(b.read(int(b.readline())),"ssh_ipykernel-agent","exec"))'
) % protocol.EXIT_PYTHON_TOO_OLD

#: The agent's modules (bootstrap.main is its entry point) and the probe's (probe.main).
#: ``launch`` is the kernel launcher's source (kernelcmd.LAUNCHER) and the warm pool's; the pool
#: is started with ``loader``'s source too (warm.py: pool_program).
AGENT_MODULES = ("protocol", "launch", "kernelcmd", "connfile", "agent", "clients", "grace", "logrelay", "streams", "warm",
                 "warmpool", "unixsock", "loader", "keeper", "agentserver", "bootstrap")
PROBE_MODULES = ("protocol", "launch", "kernelcmd", "probe")
#: ``ssh-ipykernel status``'s question about the host's warm pools (pools.main).
POOLS_MODULES = ("protocol", "launch", "unixsock", "loader", "warmpool", "warm", "agentserver", "pools")
#: Not bundled: sent whole as the program of a ``python -c`` (slurm.py: the job's launcher, a step's spawn).
NODE_MODULES = ("slurmnode",)
FILENAME = loader.FILENAME

Sources = Mapping[str, Tuple[str, str]]  # module name -> (file name, source)


def remote_dir() -> str:
    return os.path.dirname(protocol.__file__)


def read_sources(modules: Tuple[str, ...]) -> Dict[str, Tuple[str, str]]:
    """The named modules of ``ssh_ipykernel.remote``, as they are on disk (read once per
    process: the program and the agent's code id are made from the same text)."""
    return dict(_read_sources(modules))


@functools.lru_cache(maxsize=8)
def _read_sources(modules: Tuple[str, ...]) -> Tuple[Tuple[str, Tuple[str, str]], ...]:
    sources = []
    for name in modules:
        with open(os.path.join(remote_dir(), f"{name}.py"), encoding="utf-8") as f:
            sources.append((name, (FILENAME % name, f.read())))
    return tuple(sources)


def pack(sources: Sources, main: str) -> bytes:
    """The program: remote/loader.py, then ``run`` of ``main`` with ``sources``."""
    with open(os.path.join(remote_dir(), "loader.py"), encoding="utf-8") as f:
        head = f.read()
    return loader.program(head, dict(sources), main).encode("utf-8")


@functools.lru_cache(maxsize=4)
def bundle_source(modules: Tuple[str, ...], main: str = "bootstrap") -> bytes:
    """The program that runs ``main.main()`` with ``modules`` importable on the remote."""
    return pack(read_sources(modules), main)


def agent_source() -> bytes:
    """The remote agent's program (bootstrap.py's main)."""
    return bundle_source(AGENT_MODULES, "bootstrap")


@functools.lru_cache(maxsize=1)
def agent_bundle_id() -> str:
    """The identity of the agent's code as the remote computes it (agentserver.bundle_id): an
    agent server runs the code of the proxy that started it."""
    return protocol.bundle_id(read_sources(AGENT_MODULES))


def probe_source() -> bytes:
    """The probe's program (probe.py's main)."""
    return bundle_source(PROBE_MODULES, "probe")


def pools_source() -> bytes:
    """The warm pools' lister (pools.py's main)."""
    return bundle_source(POOLS_MODULES, "pools")


def agent_stdin(params: Union[protocol.AgentParams, Mapping[str, object]], source: Optional[bytes] = None) -> bytes:
    """What we write to the session's stdin before any command: length, program, parameters.

    ``params`` is an AgentParams; a mapping is sent as it is (tests send malformed ones)."""
    import json

    source = agent_source() if source is None else source
    line = params.to_json() if isinstance(params, protocol.AgentParams) else json.dumps(dict(params))
    return b"%d\n" % len(source) + source + (line + "\n").encode("utf-8")
