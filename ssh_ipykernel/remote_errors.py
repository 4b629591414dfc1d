"""How an agent session failed, translated into an error that tells the user what to do.

The remote side reports failures as sentinel exit codes (the sh wrapper, the loader) or as an
``error`` event with a code (the agent); this is the one place that turns them into sentences.
"""
from __future__ import annotations

import re
import shlex
from typing import Dict, Optional

from . import exceptions as exc
from .remote import protocol

_CODE_FOR_EXIT = {exit_code: code for code, exit_code in protocol.ERROR_EXIT_CODES.items()}


def error_for_exit(
    returncode: Optional[int],
    stderr: str,
    *,
    host: str,
    python: Optional[str],
    event: Optional[Dict[str, object]] = None,
    pre_command: Optional[str] = None,
) -> exc.SSHKernelError:
    """Translate how the agent's session ended into an error that tells the user what to do."""
    shown = python or "python3 (from the remote PATH)"
    message = str(event.get("message", "")) if event else ""
    # The error event's code and the one the exit code stands for: either may say what failed.
    codes = {event.get("code") if event else None, _CODE_FOR_EXIT.get(returncode)}
    if pre_command and (returncode == protocol.EXIT_PRE_COMMAND or (
            returncode == 2 and re.search(r"(?i)syntax error|unexpected|unterminated", stderr))):
        return exc.PreCommandError(
            f"the --pre-command failed on {host}, so the kernel was not started. It runs in your "
            f"remote login shell before python; try it there: ssh {host} {shlex.quote(pre_command)}",
            host=host, detail=stderr,
        )
    if "sudo:" in stderr and ("password is required" in stderr or "a terminal is required" in stderr):
        return exc.SudoError(
            f"sudo on {host} wants a password; --sudo needs passwordless sudo for the remote "
            f"python (a NOPASSWD rule in sudoers), or drop --sudo",
            host=host, detail=stderr,
        )
    if returncode == protocol.EXIT_PYTHON_NOT_FOUND:
        return exc.RemotePythonNotFoundError(
            f"remote python {shown} not found on {host} (no such file, or not executable). Pass "
            f"--python with an interpreter path (e.g. /opt/conda/envs/py311/bin/python) or an "
            f"environment prefix (e.g. /opt/conda/envs/py311) that exists on {host}",
            host=host,
        )
    if returncode == protocol.EXIT_PYTHON_TOO_OLD:
        return exc.RemotePythonTooOldError(
            f"remote python {shown} on {host} is older than 3.8; point --python at a newer "
            f"interpreter or environment",
            host=host, detail=stderr,
        )
    if "no_ipykernel" in codes:
        return exc.IPyKernelMissingError(
            f"ipykernel is not installed for the remote python {shown} on {host}. Install it "
            f"there (e.g. ssh {host} '<python> -m pip install ipykernel') or point --python at an "
            f"environment that has it",
            host=host,
        )
    if "no_jupyter_client" in codes:
        return exc.IPyKernelMissingError(
            f"jupyter_client is missing for the remote python {shown} on {host} ({message}); "
            f"reinstall ipykernel there, which brings it",
            host=host,
        )
    if "connection_file" in codes:
        return exc.RemoteConnectionFileError(
            f"could not write the kernel's connection file on {host}: {message}. Check free disk "
            f"space and permissions of the Jupyter runtime dir there, or choose another one with "
            f"--pre-command 'export JUPYTER_RUNTIME_DIR=/a/writable/dir'",
            host=host, detail=stderr,
        )
    if "kernelspec" in codes:
        return exc.RemoteKernelSpecError(
            f"cannot use the remote kernel on {host}: {message}. Give --remote-kernel one of "
            f"the kernelspecs installed there (`jupyter kernelspec list` on {host}), or point "
            f"--python at the environment that has it",
            host=host, detail=stderr,
        )
    if "workdir" in codes:
        return exc.WorkdirError(
            f"cannot start the kernel in the --workdir on {host}: {message}. Create it there "
            f"(ssh {host} mkdir -p <dir>) or give an existing directory; ~ means your remote home",
            host=host, detail=stderr,
        )
    if "no_kernel" in codes:
        return exc.KernelGoneError(
            f"the remote kernel on {host} is gone: {message or 'its keeper does not answer'}. It was "
            f"shut down after the grace period without a proxy, or the host restarted",
            host=host,
        )
    if "bad_params" in codes:
        return exc.KernelStartError(f"the remote agent rejected its parameters: {message}", host=host)
    if returncode == 255:
        return exc.ConnectionLostError(
            f"the SSH connection to {host} failed while starting the kernel", host=host, detail=stderr
        )
    if returncode == 127:
        return exc.RemoteError(
            f"the remote shell on {host} could not run the start command; ssh_ipykernel needs a "
            f"POSIX login shell (sh, bash, zsh, dash) on the remote",
            host=host, detail=stderr,
        )
    what = message or f"the start command exited with code {returncode}"
    hint = ""
    if pre_command and not message:
        hint = " (the --pre-command runs first: does it exit, or exec another program?)"
    return exc.KernelStartError(f"could not start the kernel on {host}: {what}{hint}", host=host, detail=stderr)
