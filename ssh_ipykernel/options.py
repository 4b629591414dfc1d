"""Options shared by the proxy and manage: one definition, one validation.

manage copies them into the kernelspec argv, so both commands must accept exactly the same
values; defining them once keeps the two from drifting apart.
"""
from __future__ import annotations

import os
import re
import shlex
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Optional, Tuple, TypeVar

import click

from .exceptions import UsageError
from .hosts import parse_host

if TYPE_CHECKING:
    from .launcher import LaunchOptions

F = TypeVar("F", bound=Callable[..., object])
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KERNEL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
CONNECTION_FILE_FIELD = "{connection_file}"
DEFAULT_TIMEOUT = 30.0
#: How long a remote kernel outlives a lost connection unless --grace says otherwise.
DEFAULT_GRACE = "1h"
NEVER = ("never", "forever", "inf", "infinite")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_env(items: Iterable[str]) -> Dict[str, str]:
    """``VAR=VALUE`` pairs into a dict; the value is kept byte for byte (spaces, quotes, $)."""
    env: Dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME_RE.match(name):
            msg = (
                f"--env {item!r} is not VAR=VALUE with a valid variable name (letters, digits and "
                f"_, not starting with a digit)"
            )
            raise UsageError(msg)
        if "\0" in value:
            raise UsageError(f"--env {name}: the value contains a NUL byte")
        env[name] = value
    return env


def parse_grace(value: str) -> Optional[float]:
    """``--grace``: seconds, or a number with unit s/m/h/d; ``never`` (None) keeps the kernel."""
    if value.strip().lower() in NEVER:
        return None
    match = _DURATION_RE.match(value)
    if not match:
        msg = (
            f"--grace {value!r} is not a duration: give seconds (600), a number with a unit "
            f"(30m, 2h, 1d) or 'never'"
        )
        raise UsageError(msg)
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def grace_option(func: F) -> F:
    """``--grace``, shared by the proxy and manage (which records it in the kernelspec)."""
    return click.option(
        "--grace", default=DEFAULT_GRACE, show_default=True, metavar="DURATION",
        help="How long the remote kernel outlives a lost connection (network down, laptop asleep, "
             "proxy killed) waiting for the proxy to come back: seconds or 30m, 2h, 1d; 'never' "
             "keeps it until a proxy shuts it down. 0 ends it as soon as the connection is lost.",
    )(func)


#: Seconds the shared SSH connection to a host stays open after its last kernel ended.
DEFAULT_PERSIST = 60.0


def persist_option(func: F) -> F:
    """``--persist``, shared by the proxy and manage (which records it in the kernelspec)."""
    return click.option(
        "--persist", type=click.FloatRange(min=1), default=DEFAULT_PERSIST, show_default=True, metavar="SECONDS",
        help="How long the SSH connection to HOST, shared by its kernels, stays open after the "
             "last one ended (a restart or the next kernel then needs no new login).",
    )(func)


#: --transport when not given: OpenSSH if an ssh client is on PATH, else paramiko.
DEFAULT_TRANSPORT = "auto"


def transport_option(func: F) -> F:
    """``--transport``, shared by the proxy and manage (which records it in the kernelspec)."""
    from .transport import CHOICES

    return click.option(
        "--transport", type=click.Choice(list(CHOICES)), default=DEFAULT_TRANSPORT, show_default=True,
        help="How to talk SSH: openssh (the ssh client; one shared connection per host), paramiko "
             "(pure Python, for machines without an ssh client), or auto (openssh if ssh is on PATH).",
    )(func)


def check_python(python: Optional[str]) -> Optional[str]:
    """The remote interpreter or prefix: any path, but one line of printable text."""
    if python is None:
        return None
    if not python.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in python):
        raise UsageError(f"--python {python!r} must be a non-empty path without control characters")
    return python


def check_ssh_config(path: Optional[str]) -> Optional[str]:
    """An ssh -F file must exist (ssh would otherwise fail with a less helpful message)."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UsageError(f"--ssh-config {path}: no such file (give the path of an ssh_config file)")
    return os.path.abspath(path)


def check_common(
    host: str, python: Optional[str], env: Iterable[str], ssh_config: Optional[str]
) -> Tuple[Dict[str, str], Optional[str]]:
    """Validate the shared options early, before anything is started or written.

    Returns the parsed environment and the absolute path of the ssh config file (if any).
    """
    parse_host(host)
    check_python(python)
    return parse_env(env), check_ssh_config(ssh_config)


def common_options(func: F) -> F:
    """The options both the proxy and manage take, with the same names and help."""
    decorators = [
        click.option("--host", required=True, metavar="HOST",
                     help="Where the kernel runs: an ~/.ssh/config alias, user@host, host:port or ssh://user@host:port."),
        click.option("--python", metavar="PATH",
                     help="Remote interpreter path or environment prefix (PREFIX/bin/python). Default: python3 on the remote PATH."),
        click.option("--ssh-config", type=click.Path(dir_okay=False), metavar="FILE",
                     help="ssh config file to use instead of ~/.ssh/config (ssh -F)."),
        click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
                     help="Seconds allowed to connect and to start the remote kernel."),
        click.option("--env", "env", multiple=True, metavar="VAR=VALUE",
                     help="Environment variable for the remote kernel (repeatable)."),
        click.option("--sudo", is_flag=True, help="Run the remote kernel with sudo -n (passwordless sudo only)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _one_line(option: str, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if not value.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise UsageError(f"{option} {value!r} must be non-empty and without control characters")
    return value


def split_kernel_cmd(text: str, connection_file: Optional[str] = None) -> Tuple[str, ...]:
    """``--kernel-cmd`` text -> argv (shell-like splitting; it is never run through a shell).

    Jupyter fills ``{connection_file}`` into every argument of a kernelspec's argv, this one
    included, with the LOCAL path; the proxy (which gets that path with -f) puts the field back,
    and the remote agent substitutes the remote connection file.
    """
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"--kernel-cmd {text!r}: {e} (quote it as you would in a shell)") from None
    if connection_file:
        paths = {connection_file, os.path.realpath(connection_file)}
        for path in sorted(paths, key=len, reverse=True):
            argv = [arg.replace(path, CONNECTION_FILE_FIELD) for arg in argv]
    if not argv:
        raise UsageError("--kernel-cmd is empty: give the command that starts the kernel on the remote")
    if "\0" in text:
        raise UsageError("--kernel-cmd contains a NUL byte")
    if not any(CONNECTION_FILE_FIELD in arg for arg in argv):
        msg = (
            f"--kernel-cmd {text!r} does not say where the connection file goes: put "
            f"{CONNECTION_FILE_FIELD} where the kernel takes it, e.g. --kernel-cmd "
            f"'/opt/julia/bin/julia -i /opt/ijulia/kernel.jl {CONNECTION_FILE_FIELD}'"
        )
        raise UsageError(msg)
    return tuple(argv)


def check_launch(
    remote_kernel: Optional[str],
    kernel_cmd: Optional[str],
    workdir: Optional[str],
    pre_command: Optional[str],
    *,
    connection_file: Optional[str] = None,
) -> "LaunchOptions":
    """Validate which kernel to start and how; see launcher.LaunchOptions."""
    from .launcher import LaunchOptions

    if remote_kernel is not None and kernel_cmd is not None:
        raise UsageError("--remote-kernel and --kernel-cmd exclude each other: give one of them")
    if remote_kernel is not None and not _KERNEL_NAME_RE.match(remote_kernel):
        msg = (
            f"--remote-kernel {remote_kernel!r} is not a kernelspec name (letters, digits, '.', "
            f"'_', '-'); `jupyter kernelspec list` on the remote shows the names"
        )
        raise UsageError(msg)
    if pre_command is not None and (not pre_command.strip() or "\0" in pre_command):
        raise UsageError("--pre-command is empty or contains a NUL byte: give one shell command line")
    return LaunchOptions(
        remote_kernel=remote_kernel,
        kernel_cmd=split_kernel_cmd(kernel_cmd, connection_file) if kernel_cmd is not None else None,
        workdir=_one_line("--workdir", workdir),
        pre_command=pre_command,
    )


def launch_options(func: F) -> F:
    """What runs on the remote and how (proxy, add and check take them)."""
    decorators = [
        click.option("--remote-kernel", metavar="NAME",
                     help="Start this kernelspec installed on the remote (any language: see "
                          "`jupyter kernelspec list` there) instead of ipykernel. --python names "
                          "the Python (with jupyter_client) that finds and starts it."),
        click.option("--kernel-cmd", metavar="'CMD ARGS'",
                     help="Start this command on the remote instead of ipykernel, with "
                          "{connection_file} where the kernel takes its connection file. Split "
                          "like a shell would, but never run through one."),
        click.option("--workdir", metavar="DIR",
                     help="The kernel's working directory on the remote (~ is the remote home). "
                          "Default: the remote home."),
        click.option("--pre-command", metavar="'CMD'",
                     help="One command line your remote login shell runs first, to prepare the "
                          "environment, e.g. 'source /opt/conda/bin/activate py311' or 'module "
                          "load python/3.11'. Kept exactly; the kernel does not start if it fails."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func
