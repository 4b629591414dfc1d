"""Which kernel the remote agent starts, and how: argv, extra environment, working directory.

Part of the remote agent (see bootstrap.py): shipped as source, standard library only at module
level, Python >= 3.8. Three ways to say what runs, all given as data in the agent's parameters
(never through a shell):

* nothing: ipykernel with the agent's own python (``--python``);
* ``remote_kernel``: a kernelspec installed on the remote, found with jupyter_client's
  KernelSpecManager and substituted as Jupyter does (``{connection_file}``, ``{prefix}``,
  ``{resource_dir}``; ``python`` as argv[0] means this python; ``${VAR}`` in its env);
* ``kernel_cmd``: an explicit argv list (split locally), ``{connection_file}`` substituted.

``workdir`` (any of them) is the kernel's working directory; ``~`` means the remote home.
"""
from __future__ import annotations

import importlib.util
import os
import re
import string
import sys

from . import launch
from .protocol import CONNECTION_FILE_FIELD, AgentParams, BootstrapError

_FIELD_RE = re.compile(r"\{([A-Za-z0-9_]+)\}")

#: What ``-m ipykernel_launcher`` becomes (launch_argv): launch.py's own source text (the kernel's
#: fresh python has no shipped package to import it from), then its ``cold_start``: the same
#: module run the same way (sys.argv, sys.path[0], ``__main__``), showing the same command line
#: (``sys.orig_argv``, /proc/PID/cmdline), with a larger IOPub queue. A warm kernel gets the same
#: from the same module (warmpool.become_kernel).
LAUNCHER = launch.__loader__.get_source(launch.__name__) + "\ncold_start()\n"  # type: ignore[union-attr]


def launch_argv(argv: "list[str]") -> "list[str]":
    """``argv`` as the keeper starts it: ipykernel (``python [options] -m ipykernel_launcher
    ...``) through LAUNCHER, so that its output is not dropped while the keeper is slow to read
    it; any other command as it is. ``argv`` itself (what check shows, what the log names) keeps
    the plain form."""
    for i, arg in enumerate(argv[1:-1], 1):
        if arg == "-m":
            if argv[i + 1] == "ipykernel_launcher":
                return argv[:i] + ["-c", LAUNCHER] + argv[i + 2:]
            break
    return list(argv)


def check_requirements(params: AgentParams) -> None:
    """Fail early, before any file is written, if this python cannot run the chosen kernel.

    Every kernel needs jupyter_client here (the connection file); only the default kernel needs
    ipykernel in this python (a remote kernelspec or command brings its own interpreter).
    """
    needed = [("jupyter_client", "no_jupyter_client")]
    if params.default_kernel:
        needed.insert(0, ("ipykernel", "no_ipykernel"))
    for module, code in needed:
        if importlib.util.find_spec(module) is None:
            raise BootstrapError(code, "%s is not installed for %s" % (module, sys.executable))


def _substitute(argv: list, fields: dict) -> list:
    """``{name}`` fields replaced where known, others left as they are (Jupyter's rule)."""
    return [_FIELD_RE.sub(lambda m: fields.get(m.group(1), m.group(0)), arg) for arg in argv]


def resolve_workdir(workdir: "str | None") -> "str | None":
    """The kernel's working directory as an absolute remote path; BootstrapError if unusable."""
    if workdir is None:
        return None
    path = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.exists(path):
        raise BootstrapError("workdir", "the working directory %s does not exist" % path)
    if not os.path.isdir(path):
        raise BootstrapError("workdir", "the working directory %s is not a directory" % path)
    if not os.access(path, os.X_OK):
        raise BootstrapError("workdir", "the working directory %s cannot be entered (permission denied)" % path)
    return path


def find_kernelspec(name: str):  # noqa: ANN201 - a jupyter_client KernelSpec
    """The remote kernelspec ``name``; BootstrapError naming the installed ones if absent."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError as e:
        raise BootstrapError("no_jupyter_client", "cannot import jupyter_client: %s" % e) from e
    manager = KernelSpecManager()
    try:
        return manager.get_kernel_spec(name)
    except NoSuchKernel:
        names = sorted(manager.find_kernel_specs())
        installed = ", ".join(names) if names else "none"
        raise BootstrapError(
            "kernelspec",
            "no kernelspec %r for %s (installed there: %s)" % (name, sys.executable, installed),
        ) from None


def list_kernelspecs() -> dict:
    """Installed remote kernelspecs: name -> {display_name, language}; {} without jupyter_client."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().get_all_specs()
    except Exception:  # noqa: BLE001 - informational only (a broken kernel.json, no jupyter_client)
        return {}
    return {
        name: {"display_name": s["spec"].get("display_name", name), "language": s["spec"].get("language", "")}
        for name, s in specs.items()
    }


def kernel_command(params: AgentParams, connection_file: str, python: str) -> dict:
    """What to start for ``params``: argv, extra env, cwd, interrupt mode, language, display
    name, kernelspec metadata and resource dir (for a remote kernelspec).

    ``python`` is the interpreter running the agent (``sys.executable``). ``env`` holds only
    the additions to the login environment: the kernelspec's env (``${VAR}`` expanded against
    the login environment) and then the user's ``--env`` values, which win. Raises
    BootstrapError ("kernelspec", "workdir") with a message for the user.
    """
    user_env = dict(params.env or {})
    result = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", connection_file],
        "env": user_env,
        "cwd": resolve_workdir(params.workdir),
        "interrupt_mode": "signal",
        "language": "python",
        "display_name": "Python %d.%d" % sys.version_info[:2],
        "metadata": {"debugger": True},
        "resource_dir": None,
    }
    name = params.remote_kernel
    if name:
        spec = find_kernelspec(name)
        argv = list(spec.argv)
        if not argv or not any(CONNECTION_FILE_FIELD in arg for arg in argv):
            raise BootstrapError(
                "kernelspec",
                "the kernelspec %r at %s has no %s in its argv, so it cannot be given the "
                "connection file" % (name, spec.resource_dir, CONNECTION_FILE_FIELD),
            )
        # As jupyter_client does: "python" means the interpreter of this Jupyter installation.
        if argv[0] in ("python", "python%d" % sys.version_info[0], "python%d.%d" % sys.version_info[:2]):
            argv[0] = python
        fields = {"connection_file": connection_file, "prefix": sys.prefix, "resource_dir": spec.resource_dir}
        substitutions = dict(os.environ, **user_env)
        env = {k: string.Template(str(v)).safe_substitute(substitutions) for k, v in (spec.env or {}).items()}
        env.update(user_env)
        result.update(
            argv=_substitute(argv, fields),
            env=env,
            interrupt_mode=spec.interrupt_mode or "signal",
            language=spec.language or "",
            display_name=spec.display_name or name,
            metadata=dict(spec.metadata or {}),
            resource_dir=spec.resource_dir,
        )
    elif params.kernel_cmd:
        result.update(
            argv=_substitute(list(params.kernel_cmd), {"connection_file": connection_file}),
            language="",
            display_name="",
            metadata={},
        )
    return result
