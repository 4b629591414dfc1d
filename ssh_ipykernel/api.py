"""The Python API for SSH kernelspecs: add, list, check, upgrade and remove them from code.

``ssh_ipykernel.manage`` re-exports these, so that scripts written for ssh_ipykernel 1.x keep
working: ``ssh_ipykernel.manage.add_kernel(host=..., display_name=..., local_python_path=...,
remote_python_path=..., env="VAR1=a VAR2=b", sudo=False, timeout=10)`` installs a kernelspec and
returns its name, as 1.x did. Every option goes through the proxy's own command line
(proxycli.parse_proxy_argv) into the one options model, exactly as ``manage add`` parses it.

Nothing here prints or exits: errors are the package's typed exceptions (exceptions.py), the
results are values.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .exceptions import SSHKernelError, UsageError
from .kernelspec import (
    KernelSpecOptions,
    build_kernelspec,
    check_kernel_name,
    default_kernel_name,
    install_kernelspec,
    v1_kernel_name,
)
from .options import CONNECTION_FILE_FIELD, ProxyOptions, write_env_item
from .proxycli import parse_proxy_argv
from .specs import CURRENT, Upgrade, get_spec, list_specs, remove_spec, upgrade_spec

__all__ = ["KernelName", "Upgrade", "add_kernel", "check_kernel", "list_kernels", "remove_kernel",
           "upgrade_kernel", "upgrade_kernels"]

logger = logging.getLogger(__name__)

#: add_kernel's keyword options that map one to one onto a proxy option.
_OPTIONS = ("ssh_config", "grace", "persist", "transport", "remote_kernel", "kernel_cmd", "workdir", "pre_command")


class KernelName(str):
    """The installed kernelspec's name -- a ``str``, as ssh_ipykernel 1.x's add_kernel returned --
    that also carries ``.name`` and ``.directory`` (where kernel.json was written)."""

    directory: str

    def __new__(cls, name: str, directory: str = "") -> "KernelName":  # "": as pickle and copy rebuild it
        obj = super().__new__(cls, name)
        obj.directory = directory
        return obj

    @property
    def name(self) -> str:
        return str(self)


EnvArg = Union[None, str, Mapping[str, str], Sequence[str]]


def _env_args(env: EnvArg) -> List[str]:
    """``env`` as --env arguments: 1.x's one string (read like one --env argument, so "A=1 B=2"
    is two variables), a dict (values kept exactly), or a list of NAME=VALUE."""
    if env is None:
        return []
    if isinstance(env, str):
        return ["--env", env]
    if isinstance(env, Mapping):
        return [arg for name, value in env.items() for arg in ("--env", write_env_item(str(name), str(value)))]
    if isinstance(env, (list, tuple)) and all(isinstance(item, str) for item in env):
        return [arg for item in env for arg in ("--env", item)]
    raise UsageError(f"env={env!r}: give a dict of NAME: VALUE, a list of 'NAME=VALUE', or one 'NAME=VALUE ...' string")


def _local_python(path: Optional[str]) -> str:
    python = path or sys.executable
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        msg = (f"local_python_path={python!r} is not an executable file on this machine: give the "
               f"python that has ssh_ipykernel installed here, or leave it out for this one ({sys.executable})")
        raise UsageError(msg)
    return python


def _proxy_options(host: str, remote_python_path: Optional[str], env: EnvArg, sudo: bool, timeout: Optional[float],
                   opt_args: Optional[Sequence[str]], named: Dict[str, Any]) -> ProxyOptions:
    """The keyword arguments as the proxy's command line, parsed once by the proxy's command."""
    if opt_args is not None and not (isinstance(opt_args, (list, tuple)) and all(isinstance(a, str) for a in opt_args)):
        raise UsageError(f"opt_args={opt_args!r}: give a list of the proxy's command-line arguments (strings)")
    args = ["--host", host]
    if remote_python_path is not None:
        args.append(f"--python={remote_python_path}")
    if timeout is not None:
        args.append(f"--timeout={timeout}")
    args += _env_args(env)
    if sudo:
        args.append("--sudo")
    for option in _OPTIONS:
        if named.get(option) is not None:
            args.append(f"--{option.replace('_', '-')}={named[option]}")
    args += [*(opt_args or ()), "-f", CONNECTION_FILE_FIELD]
    try:
        params = parse_proxy_argv([sys.executable, "-m", "ssh_ipykernel", *args])
    except UsageError as e:
        what = f" (with opt_args={list(opt_args)!r})" if opt_args else ""
        msg = (f"add_kernel{what}: {e.message.replace('its argv is', 'the options are').rstrip('.')}; opt_args "
               f"takes the options of `python -m ssh_ipykernel --help`")
        raise UsageError(msg) from None
    recorded = [f"--{p.replace('_', '-')}" for p in ("log_level", "log_file") if params.get(p) not in (None, "INFO")]
    if recorded:
        raise UsageError(f"opt_args: {', '.join(recorded)} is not recorded in a kernelspec; set it when running the proxy")
    options = ProxyOptions.from_params(params)
    for note in options.env_notes:
        logger.info("%s", note)
    return options


def add_kernel(
    host: str,
    display_name: Optional[str] = None,
    local_python_path: Optional[str] = None,
    remote_python_path: Optional[str] = None,
    env: EnvArg = None,
    sudo: bool = False,
    system: bool = False,
    timeout: Optional[float] = None,
    module: str = "ssh_ipykernel",
    opt_args: Optional[Sequence[str]] = None,
    *,
    name: Optional[str] = None,
    ssh_config: Optional[str] = None,
    grace: Optional[str] = None,
    persist: Optional[float] = None,
    transport: Optional[str] = None,
    remote_kernel: Optional[str] = None,
    kernel_cmd: Optional[str] = None,
    workdir: Optional[str] = None,
    pre_command: Optional[str] = None,
    language: Optional[str] = None,
    prefix: Optional[str] = None,
) -> KernelName:
    """Write and install a kernelspec that runs a kernel on ``host`` over SSH; return its name.

    The first ten arguments are ssh_ipykernel 1.x's, in its order:

    * ``display_name`` -- shown in kernel pickers; when given and ``name`` is not, the kernelspec
      gets 1.x's name for it, ``ssh__`` + the display name's letters, digits, ``-._``
      (lowercased, as Jupyter stores it): "SSH btest:demo(abc)" -> ``ssh__sshbtestdemoabc``.
      Without it: "SSH <host>" and ``ssh_<host>``, as ``manage add`` names it.
    * ``local_python_path`` -- the local python Jupyter runs the proxy with (default: this one);
    * ``remote_python_path`` -- the remote interpreter or environment prefix (--python);
    * ``env`` -- 1.x's "VAR1=a VAR2=b" string (read as one --env argument: see the README's
      rule), a dict (values kept exactly) or a list of "NAME=VALUE";
    * ``sudo``; ``system`` -- install system-wide instead of for this user;
    * ``timeout`` -- seconds to connect and start the kernel (default: the proxy's, not 1.x's 5);
    * ``module`` -- must be "ssh_ipykernel"; ``opt_args`` -- more proxy options, as argv words.

    The keyword-only ones are today's options (``python -m ssh_ipykernel.manage add --help``);
    ``prefix`` installs under PREFIX/share/jupyter/kernels. The host is not contacted (use
    :func:`check_kernel`). Raises UsageError (or HostSpecError) for a bad value.
    """
    if module != "ssh_ipykernel":
        msg = (f"module={module!r}: this ssh_ipykernel writes kernelspecs for its own proxy only "
               f"(module='ssh_ipykernel'); leave module out")
        raise UsageError(msg)
    if system and prefix:
        raise UsageError("system=True and prefix exclude each other: give one of them")
    python = _local_python(local_python_path)
    options = _proxy_options(host, remote_python_path, env, sudo, timeout, opt_args, {
        "ssh_config": ssh_config, "grace": grace, "persist": persist, "transport": transport,
        "remote_kernel": remote_kernel, "kernel_cmd": kernel_cmd, "workdir": workdir, "pre_command": pre_command})
    if name is not None:
        kernel_name = check_kernel_name(name)
    elif display_name is not None:
        kernel_name = check_kernel_name(v1_kernel_name(display_name))
    else:
        kernel_name = default_kernel_name(options.host.spec, options.launch.remote_kernel)
    spec = build_kernelspec(KernelSpecOptions(proxy=options, display_name=display_name, name=kernel_name,
                                              language=language or "python",
                                              debugger=options.launch.kernel_cmd is None), python)
    directory = install_kernelspec(spec, kernel_name, user=not system and prefix is None, prefix=prefix)
    return KernelName(kernel_name, directory)


def list_kernels(prefix: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every SSH kernelspec Jupyter sees, as ``manage list --json`` prints them: name,
    display_name, host, language, remote, form ("current", "1.x", "older" or "unreadable"),
    location, options (the proxy's, as parsed from the argv) and kernel.json."""
    return [spec.as_dict() for spec in list_specs(prefix)]


def remove_kernel(name: str, prefix: Optional[str] = None) -> str:
    """Remove the SSH kernelspec ``name`` (never another kind); return the directory removed.
    KernelSpecNotFoundError if there is none of that name."""
    return remove_spec(get_spec(name, prefix).name, prefix)


def check_kernel(name: str, prefix: Optional[str] = None) -> Dict[str, Any]:
    """Check the SSH kernelspec ``name`` as ``manage check NAME`` does (it connects and starts a
    kernel); return ``{"name", "host", "ok", "exit_code", "steps": [{"name", "ok", "seconds",
    "detail", "error"}]}``. A failed step is data, not an exception; KernelSpecNotFoundError if
    there is no such kernelspec, UsageError if its argv cannot be read."""
    from .check import Checker, Target

    spec = get_spec(name, prefix)
    checker = Checker(Target(spec.proxy_options(), kernelspec=spec.spec, resource_dir=spec.resource_dir))
    checker.run()
    failed = checker.failed
    steps = [{"name": s.name, "ok": s.ok, "seconds": s.seconds, "detail": s.detail,
              "error": str(s.error) if s.error else None} for s in checker.steps]
    exit_code = failed.error.exit_code if failed is not None and isinstance(failed.error, SSHKernelError) else 0
    return {"name": spec.name, "host": spec.host, "ok": failed is None, "exit_code": exit_code, "steps": steps}


def upgrade_kernel(name: str, *, prefix: Optional[str] = None, dry_run: bool = False) -> Upgrade:
    """Rewrite the SSH kernelspec ``name`` in today's form (see specs.upgrade_spec); with
    ``dry_run``, write nothing. ``Upgrade.needed`` is False for one already current."""
    return upgrade_spec(get_spec(name, prefix), dry_run=dry_run)


def upgrade_kernels(*, prefix: Optional[str] = None, dry_run: bool = False) -> List[Upgrade]:
    """:func:`upgrade_kernel` for every SSH kernelspec not in today's form."""
    return [upgrade_spec(spec, dry_run=dry_run) for spec in list_specs(prefix) if spec.form() != CURRENT]
