"""Kernelspecs for SSH kernels: their name, their kernel.json, and installing them.

Installing goes through jupyter_client's KernelSpecManager, so --user/--sys-prefix/--prefix
land where every Jupyter front end looks.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import __version__
from .exceptions import UsageError

# jupyter_client's rule for kernelspec directory names (case-insensitive there; we lowercase).
_VALID_NAME_RE = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)


@dataclass
class KernelSpecOptions:
    """What a kernelspec for an SSH kernel records (it is replayed as proxy options)."""

    host: str
    python: Optional[str] = None
    display_name: Optional[str] = None
    name: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    sudo: bool = False
    timeout: Optional[float] = None
    ssh_config: Optional[str] = None
    language: str = "python"
    remote_kernel: Optional[str] = None
    kernel_cmd: Optional[str] = None  # as the user typed it (split by the proxy)
    workdir: Optional[str] = None
    pre_command: Optional[str] = None
    interrupt_mode: str = "signal"
    debugger: bool = True  # ipykernel answers debug_request; other kernels say so in their spec
    #: logo files (name -> bytes) copied from a remote kernelspec, shown by JupyterLab's launcher
    resources: Dict[str, bytes] = field(default_factory=dict)
    grace: Optional[str] = None  # as given to --grace; None: the proxy's default
    persist: Optional[float] = None  # --persist seconds; None: the proxy's default
    transport: Optional[str] = None  # --transport; None: the proxy's default (auto)


def default_display_name(host: str) -> str:
    return f"SSH {host}"


def default_kernel_name(host: str, remote_kernel: Optional[str] = None) -> str:
    """A valid kernelspec name derived from the host: ``ssh_`` plus its safe characters
    (and ``_<remote kernel>``, so that several kernels of one host get distinct names)."""
    slug = re.sub(r"[^a-z0-9._-]+", "_", host.lower()).strip("._-")
    name = f"ssh_{slug or 'host'}"
    if remote_kernel:
        name += "_" + re.sub(r"[^a-z0-9._-]+", "_", remote_kernel.lower())
    return name


def check_kernel_name(name: str) -> str:
    if not _VALID_NAME_RE.match(name):
        msg = (
            f"--name {name!r} is not a valid kernelspec name: use only letters, digits, '.', '_' "
            f"and '-' (e.g. {default_kernel_name(name)})"
        )
        raise UsageError(msg)
    return name.lower()


def _option(name: str, value: str) -> List[str]:
    """``[name, value]``, or ``[name=value]`` for a value starting with ``~``: jupyter_client's
    launch_kernel runs os.path.expanduser on every argv element, which would turn a remote
    ``~/env`` into the LOCAL home; it leaves ``--python=~/env`` alone."""
    return [f"{name}={value}"] if value.startswith("~") else [name, value]


def proxy_argv(options: KernelSpecOptions, python_executable: Optional[str] = None) -> List[str]:
    """The argv Jupyter runs: this python, -m ssh_ipykernel, our options, -f {connection_file}."""
    argv = [python_executable or sys.executable, "-m", "ssh_ipykernel", "--host", options.host]
    if options.python:
        argv += _option("--python", options.python)
    if options.ssh_config:
        argv += ["--ssh-config", options.ssh_config]
    if options.timeout is not None:
        argv += ["--timeout", f"{options.timeout:g}"]
    for name, value in options.env.items():
        argv += ["--env", f"{name}={value}"]
    if options.sudo:
        argv.append("--sudo")
    if options.persist is not None:
        argv += ["--persist", f"{options.persist:g}"]
    if options.transport is not None:
        argv += ["--transport", options.transport]
    for option, value in (("--remote-kernel", options.remote_kernel), ("--kernel-cmd", options.kernel_cmd),
                          ("--workdir", options.workdir), ("--pre-command", options.pre_command),
                          ("--grace", options.grace)):
        if value is not None:
            argv += _option(option, value)
    argv += ["-f", "{connection_file}"]
    return argv


def build_kernelspec(options: KernelSpecOptions, python_executable: Optional[str] = None) -> Dict[str, Any]:
    """The kernel.json content."""
    return {
        "argv": proxy_argv(options, python_executable),
        "display_name": options.display_name or default_display_name(options.host),
        "language": options.language,
        # A kernel that wants interrupt_request messages gets them straight through the tunnel.
        "interrupt_mode": options.interrupt_mode,
        "env": {},
        "metadata": {
            # JupyterLab shows its debugger for kernels that say so; ipykernel >= 6 (debugpy)
            # answers debug_request over the control channel, which the tunnel carries.
            "debugger": options.debugger and options.language == "python",
            "ssh_ipykernel": {
                "version": __version__,
                "host": options.host,
                "python": options.python,
                "sudo": options.sudo,
                "remote_kernel": options.remote_kernel,
                "kernel_cmd": options.kernel_cmd,
                "workdir": options.workdir,
                "pre_command": options.pre_command,
                "grace": options.grace,
                "persist": options.persist,
                "transport": options.transport,
            },
        },
    }


def kernelspec_exists(name: str, prefix: Optional[str] = None, *, user: bool = True) -> bool:
    """Whether installing ``name`` under ``prefix`` (or for the user) would replace a kernelspec."""
    from jupyter_core.paths import jupyter_data_dir

    if prefix:
        base = os.path.join(prefix, "share", "jupyter", "kernels")
    elif user:
        base = os.path.join(jupyter_data_dir(), "kernels")
    else:
        return False  # system-wide installs are not offered by manage
    return os.path.isdir(os.path.join(base, name))


def install_kernelspec(
    spec: Dict[str, Any],
    name: str,
    *,
    user: bool = True,
    prefix: Optional[str] = None,
    resources: Optional[Dict[str, bytes]] = None,
) -> str:
    """Write ``spec`` (and logo ``resources``) as kernelspec ``name`` through KernelSpecManager;
    return the installed dir."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory(prefix="ssh_ipykernel-") as tmp:
        src = os.path.join(tmp, name)
        os.mkdir(src)
        for filename, data in (resources or {}).items():
            with open(os.path.join(src, os.path.basename(filename)), "wb") as f:
                f.write(data)
        with open(os.path.join(src, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1)
            f.write("\n")
        try:
            return KernelSpecManager().install_kernel_spec(
                src, kernel_name=name, user=user and prefix is None, prefix=prefix
            )
        except PermissionError as e:
            msg = (
                f"cannot write the kernelspec to {e.filename}: permission denied. Use --user (the "
                f"default) or a --prefix you can write to"
            )
            raise UsageError(msg) from e
