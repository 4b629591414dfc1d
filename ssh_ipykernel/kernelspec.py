"""Kernelspecs for SSH kernels: their name, their kernel.json, and installing them.

The argv is the kernel's ProxyOptions written out (options.py); this adds what Jupyter shows.

Installing goes through jupyter_client's KernelSpecManager, so --user/--sys-prefix/--prefix
land where every Jupyter front end looks.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import __version__
from .exceptions import UsageError
from .options import ProxyOptions

# jupyter_client's rule for kernelspec directory names (case-insensitive there; we lowercase).
_VALID_NAME_RE = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)


@dataclass
class KernelSpecOptions:
    """A kernelspec for an SSH kernel: the proxy options its argv records, and how Jupyter shows it."""

    proxy: ProxyOptions  # replayed to the proxy by the argv (ProxyOptions.argv)
    display_name: Optional[str] = None
    name: Optional[str] = None
    language: str = "python"
    interrupt_mode: str = "signal"
    debugger: bool = True  # ipykernel answers debug_request; other kernels say so in their spec
    #: logo files (name -> bytes) copied from a remote kernelspec, shown by JupyterLab's launcher
    resources: Dict[str, bytes] = field(default_factory=dict)


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


def v1_kernel_name(display_name: str) -> str:
    """The name ssh_ipykernel 1.x's add_kernel gave a kernelspec: ``ssh__`` and the display name's
    letters, digits, '-', '.' and '_' (lowercased, as jupyter_client installs every kernelspec)."""
    return ("ssh__" + re.sub(r"[^a-zA-Z0-9\-\.\_]", "", display_name)).lower()


def check_kernel_name(name: str) -> str:
    if not _VALID_NAME_RE.match(name):
        msg = (
            f"--name {name!r} is not a valid kernelspec name: use only letters, digits, '.', '_' "
            f"and '-' (e.g. {default_kernel_name(name)})"
        )
        raise UsageError(msg)
    return name.lower()


def proxy_argv(options: KernelSpecOptions, python_executable: Optional[str] = None) -> List[str]:
    """The argv Jupyter runs: this python, -m ssh_ipykernel, our options, -f {connection_file}."""
    return options.proxy.argv(python_executable)


def ssh_metadata(proxy: ProxyOptions) -> Dict[str, Any]:
    """``metadata.ssh_ipykernel`` of a kernelspec: who wrote it, and its options for people reading
    kernel.json (the argv is what counts). Its presence tells a kernelspec of this version's form
    from one of ssh_ipykernel 1.x, which wrote no metadata."""
    return {
        "version": __version__,
        "host": proxy.host.spec,
        "python": proxy.python,
        "sudo": proxy.sudo,
        "remote_kernel": proxy.launch.remote_kernel,
        "kernel_cmd": proxy.launch.written_kernel_cmd(),
        "workdir": proxy.launch.workdir,
        "pre_command": proxy.launch.pre_command,
        "grace": proxy.lifetime.written_grace(),
        "persist": proxy.written_persist(),
        "transport": proxy.written_transport(),
    }


def build_kernelspec(options: KernelSpecOptions, python_executable: Optional[str] = None) -> Dict[str, Any]:
    """The kernel.json content."""
    proxy = options.proxy
    return {
        "argv": proxy_argv(options, python_executable),
        "display_name": options.display_name or default_display_name(proxy.host.spec),
        "language": options.language,
        # A kernel that wants interrupt_request messages gets them straight through the tunnel.
        "interrupt_mode": options.interrupt_mode,
        "env": {},
        "metadata": {
            # JupyterLab shows its debugger for kernels that say so; ipykernel >= 6 (debugpy)
            # answers debug_request over the control channel, which the tunnel carries.
            "debugger": options.debugger and options.language == "python",
            "ssh_ipykernel": ssh_metadata(proxy),
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
