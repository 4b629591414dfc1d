"""The remote half of ``manage check`` and ``add --remote-kernel``: what this python can run.

Shipped like the agent (session/bundle.py sends protocol.py, kernelcmd.py and this module, each
kept as its own module) and run through the same sh wrapper and loader, so it meets the remote exactly as the agent
will: the same --python resolution, --pre-command and sudo. It starts no kernel: it reports
versions, writes and removes a test connection file where the agent would write the real one,
and works out the kernel command the agent would run (kernelcmd.py). Standard library only at
module level, Python >= 3.8. Output: one JSON ``probe`` event on stdout (or ``error`` for bad
parameters, with the agent's exit code).
"""
from __future__ import annotations

import base64
import os
import platform
import shutil
import socket
import stat
import sys
import time

from .kernelcmd import check_requirements, kernel_command, list_kernelspecs
from .protocol import AgentParams, BootstrapError, Event, package_version, read_params, runtime_dir, write_event

#: Kernelspec files that make up its look in a launcher; copied into the local kernelspec.
LOGO_FILES = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")
MAX_LOGO_BYTES = 256 * 1024


def _failure(e: BootstrapError, started: float) -> dict:
    return {"ok": False, "code": e.code, "message": e.message, "seconds": time.monotonic() - started}


def try_connection_file() -> dict:
    """Write a connection file as the agent does (same dir, mode 0600), then remove it."""
    started = time.monotonic()
    path = ""
    try:
        from jupyter_client.connect import write_connection_file

        directory = runtime_dir()
        path = os.path.join(directory, "kernel-ssh-check-%s.json" % os.urandom(4).hex())
        write_connection_file(fname=path, ip="127.0.0.1", key=os.urandom(16).hex().encode(), transport="tcp")
        os.chmod(path, 0o600)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        return {"ok": True, "dir": directory, "mode": "%o" % mode, "seconds": time.monotonic() - started}
    except ImportError as e:
        return _failure(BootstrapError("no_jupyter_client", "cannot import jupyter_client: %s" % e), started)
    except OSError as e:
        where = path or "the Jupyter runtime dir"
        return _failure(BootstrapError("connection_file", "cannot write %s: %s" % (where, e)), started)
    finally:
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass


def _logos(resource_dir: "str | None") -> dict:
    found = {}
    for name in LOGO_FILES if resource_dir else ():
        path = os.path.join(resource_dir, name)
        try:
            if os.path.getsize(path) <= MAX_LOGO_BYTES:
                with open(path, "rb") as f:
                    found[name] = base64.b64encode(f.read()).decode("ascii")
        except OSError:
            continue
    return found


def try_kernel_command(params: AgentParams) -> dict:
    """The command the agent would run, with a check that its program exists."""
    started = time.monotonic()
    try:
        command = kernel_command(params, "{connection_file}", sys.executable)
        program = command["argv"][0]
        path = dict(os.environ, **command["env"]).get("PATH", os.defpath)
        if shutil.which(program, path=path) is None:
            raise BootstrapError(
                "kernel_start", "the kernel's program %s is not found (or not executable) there" % program
            )
    except BootstrapError as e:
        return _failure(e, started)
    command["resources"] = _logos(command.pop("resource_dir"))
    command.update(ok=True, seconds=time.monotonic() - started)
    return command


def probe(params: AgentParams) -> dict:
    """Everything the report needs, each part with ok/code/message and its own timing."""
    result = {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "ipykernel": package_version("ipykernel") if _installed("ipykernel") else None,
        "jupyter_client": package_version("jupyter_client") if _installed("jupyter_client") else None,
    }
    try:
        check_requirements(params)
        result["requirements"] = {"ok": True}
    except BootstrapError as e:
        result["requirements"] = _failure(e, time.monotonic())
        return result
    result["connection_file"] = try_connection_file()
    result["kernel"] = try_kernel_command(params)
    result["kernelspecs"] = list_kernelspecs()
    return result


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    try:
        params = read_params(sys.stdin.buffer)
    except BootstrapError as e:
        write_event(sys.stdout.buffer, Event.ERROR, code=e.code, message=e.message)
        sys.exit(e.exit_code)
    write_event(sys.stdout.buffer, Event.PROBE, **probe(params))


if __name__ == "__main__":
    main()
