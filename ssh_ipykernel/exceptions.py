"""One exception tree for the whole package.

The library raises these; only the CLI layer prints them and turns them into exit codes
(``exit_code`` below), so that Jupyter's log shows one readable sentence per failure.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type


class SSHKernelError(Exception):
    """Root of every error this package raises on purpose.

    ``host`` names the remote host when there is one; ``detail`` carries the tail of ssh's or the
    remote side's stderr, shown after the message so the user sees what the server said.
    ``exit_code`` is the class's unless given (a proxy's error read back by ``manage check``).
    """

    exit_code = 10
    #: What introduces ``detail``: "detail" where no ssh client said it (paramiko, check's own
    #: DNS and TCP tests).
    detail_label = "ssh said"

    def __init__(self, message: str, *, host: Optional[str] = None, detail: str = "",
                 exit_code: Optional[int] = None, detail_label: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.detail = detail.strip()
        if exit_code is not None:
            self.exit_code = exit_code
        if detail_label is not None:
            self.detail_label = detail_label

    def __str__(self) -> str:
        if self.detail:
            return f"{self.message}\n  {self.detail_label}: " + "\n  ".join(self.detail.splitlines()[-6:])
        return self.message

    def to_dict(self) -> Dict[str, Any]:
        """The error as JSON-able data (a proxy's state file keeps its final error so)."""
        return {"kind": type(self).__name__, "exit_code": self.exit_code, "message": self.message,
                "detail": self.detail, "detail_label": self.detail_label, "host": self.host}


def error_classes() -> Dict[str, Type[SSHKernelError]]:
    """Every SSHKernelError class of this module by name (the ``kind`` of ``to_dict``)."""
    found: Dict[str, Type[SSHKernelError]] = {}
    pending = [SSHKernelError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == __name__:
            found[cls.__name__] = cls
        pending += cls.__subclasses__()
    return found


def from_dict(data: Mapping[str, Any]) -> SSHKernelError:
    """The error ``to_dict`` described. An unknown ``kind`` (a newer version wrote it) becomes the
    nearest thing there is: an SSHKernelError with the same message and exit code."""
    cls = error_classes().get(str(data.get("kind")), SSHKernelError)
    code = data.get("exit_code")
    label = data.get("detail_label")
    host = data.get("host")
    return cls(str(data.get("message", "")), host=str(host) if host is not None else None,
               detail=str(data.get("detail") or ""), exit_code=code if isinstance(code, int) else None,
               detail_label=str(label) if label else None)


class UsageError(SSHKernelError):
    """A bad option value or input file (caught before anything is started)."""

    exit_code = 2


class HostSpecError(UsageError):
    """The --host value cannot be used safely or is malformed."""


class ConnectionFileError(UsageError):
    """The local connection file Jupyter gave us is missing or malformed."""


class KernelSpecNotFoundError(UsageError):
    """No SSH kernelspec of that name is installed here (show, remove, check)."""

    exit_code = 3


# --- reaching the host -------------------------------------------------------------------------


class SSHConnectionError(SSHKernelError):
    """The SSH connection could not be made or was lost."""

    exit_code = 20


class HostNotFoundError(SSHConnectionError):
    """The host name does not resolve."""

    exit_code = 21


class SSHConnectionRefusedError(SSHConnectionError):
    """Nothing listens on the SSH port."""

    exit_code = 22


class ConnectionTimeoutError(SSHConnectionError):
    """The host did not answer in time."""

    exit_code = 23


class HostKeyError(SSHConnectionError):
    """The host key is unknown or has changed: never bypassed on the user's behalf."""

    exit_code = 24


class AuthenticationError(SSHConnectionError):
    """The server refused every authentication method we could use without a person typing."""

    exit_code = 25


class LoginRequiredError(AuthenticationError):
    """Logging in needs a person (password, one-time code, passphrase) and no login is open:
    ``ssh-ipykernel login HOST`` opens one that the kernels of HOST share. A kernel waits for it
    (--login-wait) and then fails with AuthenticationError (25); ``manage check`` reports this
    code."""

    exit_code = 27


class ConnectionLostError(SSHConnectionError):
    """An established connection went away."""

    exit_code = 26


# --- the remote side ---------------------------------------------------------------------------


class RemoteError(SSHKernelError):
    """Something on the remote host prevents starting the kernel."""

    exit_code = 30


class RemotePythonNotFoundError(RemoteError):
    exit_code = 31


class RemotePythonTooOldError(RemoteError):
    exit_code = 32


class IPyKernelMissingError(RemoteError):
    exit_code = 33


class RemoteConnectionFileError(RemoteError):
    exit_code = 34


class KernelStartError(RemoteError):
    exit_code = 35


class SudoError(RemoteError):
    exit_code = 36


class PreCommandError(RemoteError):
    """--pre-command failed in the remote login shell."""

    exit_code = 37


class RemoteKernelSpecError(RemoteError):
    """--remote-kernel names no kernelspec on the remote, or one that cannot be started."""

    exit_code = 38


class WorkdirError(RemoteError):
    """--workdir does not exist on the remote, or cannot be entered."""

    exit_code = 39


class TunnelError(SSHKernelError):
    """A local port forward could not be set up (usually: the port is taken)."""

    exit_code = 40


class KernelDiedError(SSHKernelError):
    """The remote kernel process ended without being asked to."""

    exit_code = 1


class KernelGoneError(RemoteError):
    """The kernel's keeper is gone: its grace period ran out, or the remote host restarted."""

    exit_code = 1


class ProxyExitedError(SSHKernelError):
    """A proxy started to check a kernel (manage check) exited without saying why (killed, or a
    crash): ``exit_code`` is given, the proxy's own or 1."""

    detail_label = "the proxy's log ended"


class Cancelled(SSHKernelError):
    """Start-up was cancelled by a signal (Jupyter gave up or the user pressed stop)."""

    exit_code = 0


# --- the batch scheduler (SLURM) ---------------------------------------------------------------


class SchedulerError(RemoteError):
    """The batch scheduler refused the kernel's job (unknown partition, over a limit, bad
    option), or the job ended before the kernel could start in it. ``detail`` is what the
    scheduler said."""

    exit_code = 50
    detail_label = "the scheduler said"


class QueueTimeoutError(SchedulerError):
    """The kernel's job waited in the queue for longer than --queue-timeout (it is cancelled)."""

    exit_code = 51
