"""The agent's wire protocol and its pure helpers: parameters, events, sentinel exit codes.

Part of the remote agent (see bootstrap.py): shipped as source, standard library only at module
level, Python >= 3.8.
"""
from __future__ import annotations

import json
import os
import re

PROTOCOL = 2

#: What a session asks of the agent: start a kernel, attach to the keeper of a running one, or
#: watch a kernel somebody else started (``ssh-ipykernel connect``).
MODES = ("start", "attach", "watch")

# Sentinel exit codes, translated into sentences by ssh_ipykernel.launcher (keep in sync).
EXIT_PYTHON_NOT_FOUND = 90  # emitted by the sh wrapper, not by this module
EXIT_PYTHON_TOO_OLD = 91  # emitted by the one-line loader
EXIT_BAD_PARAMS = 92
EXIT_NO_IPYKERNEL = 93
EXIT_NO_JUPYTER_CLIENT = 94
EXIT_CONNECTION_FILE = 95
EXIT_KERNEL_START = 96
EXIT_NO_KERNEL = 97  # attach: no keeper answers at that socket (the kernel has ended)
EXIT_PRE_COMMAND = 89  # emitted by the sh wrapper when --pre-command fails
EXIT_KERNELSPEC = 98  # --remote-kernel: no such kernelspec on the remote, or unusable
EXIT_WORKDIR = 99  # --workdir does not exist there (or is not a directory we may enter)

ERROR_EXIT_CODES = {
    "bad_params": EXIT_BAD_PARAMS,
    "no_ipykernel": EXIT_NO_IPYKERNEL,
    "no_jupyter_client": EXIT_NO_JUPYTER_CLIENT,
    "connection_file": EXIT_CONNECTION_FILE,
    "kernel_start": EXIT_KERNEL_START,
    "no_kernel": EXIT_NO_KERNEL,
    "kernelspec": EXIT_KERNELSPEC,
    "workdir": EXIT_WORKDIR,
}

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KERNEL_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# jupyter_client's rule for kernelspec names.
KERNEL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
#: Where a kernel command takes the path of its connection file.
CONNECTION_FILE_FIELD = "{connection_file}"
# Grace periods of the shutdown ladder: shutdown_request, then SIGTERM, then SIGKILL.
SHUTDOWN_REQUEST_WAIT = 2.5  # as jupyter_client: SIGTERM after half its shutdown_wait_time (5 s)
SHUTDOWN_REPLY_WAIT = 1.0
SIGTERM_WAIT = 2.0
#: The keeper forgets a client (a proxy's session) silent for this long: a cut link gives no EOF.
DEFAULT_CLIENT_TIMEOUT = 30.0


class BootstrapError(Exception):
    """A failure with a code the local side turns into a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def exit_code(self) -> int:
        return ERROR_EXIT_CODES.get(self.code, EXIT_KERNEL_START)


def validate_params(params: object) -> dict:
    """Check the parameters sent by the proxy; raise BootstrapError('bad_params') if malformed."""
    if not isinstance(params, dict):
        raise BootstrapError("bad_params", "parameters are not a JSON object")
    if params.get("protocol") != PROTOCOL:
        raise BootstrapError(
            "bad_params",
            "protocol %r, this agent speaks %d" % (params.get("protocol"), PROTOCOL),
        )
    kernel_id = params.get("kernel_id")
    if not isinstance(kernel_id, str) or not _KERNEL_ID_RE.match(kernel_id):
        raise BootstrapError("bad_params", "kernel_id %r is not a plain identifier" % (kernel_id,))
    mode = params.get("mode", "start")
    if mode not in MODES:
        raise BootstrapError("bad_params", "mode %r is not one of %s" % (mode, ", ".join(MODES)))
    params["mode"] = mode
    if mode == "attach":
        sock = params.get("socket")
        if not isinstance(sock, str) or not sock.endswith(".sock") or "\0" in sock:
            raise BootstrapError("bad_params", "socket %r is not a keeper socket path" % (sock,))
        return params
    if mode == "watch":
        path = params.get("connection_file")
        if not isinstance(path, str) or not path or "\0" in path:
            raise BootstrapError("bad_params", "connection_file %r is not a path" % (path,))
        return params
    if not isinstance(params.get("key"), str):
        raise BootstrapError("bad_params", "key is not a string")
    for name in ("client_timeout", "grace"):
        value = params.get(name)
        # grace None means "never": the kernel waits for its proxy forever.
        if value is not None and (not isinstance(value, (int, float)) or value < 0 or
                                  (name == "client_timeout" and value == 0)):
            raise BootstrapError("bad_params", "%s %r is not a positive number" % (name, value))
    env = params.get("env") or {}
    if not isinstance(env, dict):
        raise BootstrapError("bad_params", "env is not an object")
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            raise BootstrapError("bad_params", "environment variable name %r is not valid" % (name,))
        if not isinstance(value, str) or "\0" in value:
            raise BootstrapError("bad_params", "value of %s is not a string" % name)
    _validate_kernel_choice(params)
    return params


def _validate_kernel_choice(params: dict) -> None:
    """remote_kernel (a kernelspec name), kernel_cmd (an argv list) and workdir (a path)."""
    remote_kernel = params.get("remote_kernel")
    kernel_cmd = params.get("kernel_cmd")
    workdir = params.get("workdir")
    if remote_kernel is not None and (not isinstance(remote_kernel, str) or not KERNEL_NAME_RE.match(remote_kernel)):
        raise BootstrapError("bad_params", "remote_kernel %r is not a kernelspec name" % (remote_kernel,))
    if kernel_cmd is not None:
        if (not isinstance(kernel_cmd, list) or not kernel_cmd
                or not all(isinstance(arg, str) and "\0" not in arg for arg in kernel_cmd)):
            raise BootstrapError("bad_params", "kernel_cmd is not a non-empty list of strings")
        if not any(CONNECTION_FILE_FIELD in arg for arg in kernel_cmd):
            raise BootstrapError("bad_params", "kernel_cmd does not take %s" % CONNECTION_FILE_FIELD)
    if remote_kernel is not None and kernel_cmd is not None:
        raise BootstrapError("bad_params", "remote_kernel and kernel_cmd exclude each other")
    if workdir is not None and (not isinstance(workdir, str) or not workdir or "\0" in workdir):
        raise BootstrapError("bad_params", "workdir %r is not a path" % (workdir,))


def kernel_environment(base: dict, extra: dict, keeper_pid: int) -> dict:
    """The kernel's environment: the login environment plus the user's --env values.

    JPY_PARENT_PID names the keeper: ipykernel exits when its parent changes, so a keeper killed
    with SIGKILL cannot leave an orphaned kernel behind. (The keeper is a daemon that outlives
    the SSH session on purpose; nothing else is a valid parent.)
    """
    env = dict(base)
    env.update(extra)
    env["JPY_PARENT_PID"] = str(keeper_pid)
    return env


def runtime_dir() -> str:
    """Where the connection and log files go: Jupyter's runtime dir of the remote user, 0700."""
    from jupyter_core.paths import jupyter_runtime_dir  # comes with jupyter_client

    path = jupyter_runtime_dir()  # honours JUPYTER_RUNTIME_DIR
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def package_version(distribution: str) -> str:
    try:  # package metadata: no need to import the package itself
        from importlib.metadata import version

        return version(distribution)
    except Exception:  # noqa: BLE001 - a version string is informational only
        return "?"


def write_event(out, event: str, **fields: object) -> None:
    """One JSON line to the proxy."""
    fields["event"] = event
    try:
        out.write((json.dumps(fields) + "\n").encode("utf-8"))
        out.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the proxy is gone; the kernel's fate no longer depends on telling it


def read_params(stream) -> dict:
    line = stream.readline()
    try:
        params = json.loads(line.decode("utf-8"))
    except ValueError as e:
        raise BootstrapError("bad_params", "parameters are not valid JSON: %s" % e) from e
    return validate_params(params)
