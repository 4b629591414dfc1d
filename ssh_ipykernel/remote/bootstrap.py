"""The remote agent's entry point: sent to the remote python over ssh stdin and run there.

protocol.py, agent.py and this module are shipped as one source text (launcher.agent_source
joins them and drops the lines ending in "# local-only"). They must only import the standard
library at module level and run on any Python >= 3.8 the user points us at. They are also
importable locally, so they are unit tested like any other module.

Protocol (one ssh session, no pty):

* stdin, from the local proxy: a line with the byte length of this source, the source, then one
  JSON line of parameters (the session key travels here, never on a command line), then JSON
  command lines: ``{"op": "interrupt"}``, ``{"op": "shutdown"}``. EOF means the proxy is gone.
* stdout, to the proxy: JSON event lines: ``ready`` (pid, ports, versions), ``error`` (code,
  message; the process then exits with the matching sentinel code) and ``exited`` (returncode,
  and why the agent ended the kernel if it did).
* stderr: the kernel's own output (its log), relayed for Jupyter's log.

The kernel runs in its own session; this agent owns its lifetime (see docs/architecture.md).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from .agent import Agent  # local-only
from .protocol import BootstrapError, read_params, write_event  # local-only


def main() -> None:
    stdin = sys.stdin.buffer
    # A SIGHUP from sshd when the connection drops must not kill us before we clean up.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        params = read_params(stdin)
        agent = Agent(params)
        agent.launch()
    except BootstrapError as e:
        write_event(sys.stdout.buffer, "error", code=e.code, message=e.message)
        sys.exit(e.exit_code)
    try:
        relay = threading.Thread(target=agent.relay_log, daemon=True)
        relay.start()
        agent.emit("ready", **agent.ready_event())
        threading.Thread(target=agent.read_commands, args=(stdin,), daemon=True).start()
        if params.get("proxy_timeout"):
            threading.Thread(target=agent.watch_proxy, args=(float(params["proxy_timeout"]),), daemon=True).start()
        returncode = agent.wait()
        relay.join(2.0)
    except BaseException:
        # A bug here must not orphan a kernel holding the key: nobody else would ever end it.
        agent.signal_kernel(signal.SIGKILL)
        agent.remove_files()
        raise
    agent.remove_files()
    agent.emit("exited", returncode=returncode, reason=agent.end_reason)
    sys.stderr.flush()
    # Not a normal interpreter exit: the command thread is blocked in a read on stdin's buffer,
    # and finalisation would abort trying to take that buffer's lock.
    os._exit(0)


if __name__ == "__main__":
    main()
