"""The kernel's connection file: written with the session key; unix sockets in a private
directory (ipc) or loopback ports picked under a lock.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def free_ports(ip: str, count: int, avoid: "set[int] | frozenset[int]" = frozenset()) -> "list[int]":
    """``count`` different ports free on ``ip`` right now and not in ``avoid`` (all bound at
    once, then released)."""
    sockets = []
    ports = []  # type: list[int]
    try:
        while len(ports) < count and len(sockets) < count + 200:
            sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((ip, 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def reserved_ports(directory: str) -> "set[int]":
    """The ports in the kernel connection files of ``directory``: kernels that may still be
    booting have chosen them but not bound them yet."""
    ports = set()  # type: set[int]
    try:
        names = os.listdir(directory)
    except OSError:
        return ports
    for name in names:
        if name.startswith("kernel-") and name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as f:
                    info = json.load(f)
                if info.get("transport", "tcp") == "tcp":
                    ports.update(int(info[key]) for key in PORT_NAMES if key in info)
            except (OSError, ValueError, TypeError, AttributeError):
                continue
    return ports


def write_connection_file(path: str, info: dict, *, pick_ports: bool) -> dict:
    """Write ``info`` (ip, key, transport, ports...) to a new 0600 file at ``path``, with
    loopback ports picked here if ``pick_ports``; return the ports. Raises OSError.
    """
    info = dict(info)
    if not pick_ports:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1)
        return {name: info[name] for name in PORT_NAMES}
    # A port picked here is bound by the kernel only once it has booted, so kernels starting at
    # once could pick the same one (and the later one would die). Under a lock, ports already in
    # another kernel's connection file are skipped.
    directory = os.path.dirname(path)
    lock = os.open(os.path.join(directory, ".kernel-ssh-ports.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ports = free_ports("127.0.0.1", len(PORT_NAMES), reserved_ports(directory))
        if len(ports) < len(PORT_NAMES):
            raise OSError("no free ports on 127.0.0.1")
        info.update(zip(PORT_NAMES, ports))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1)
    finally:
        os.close(lock)
    return {name: info[name] for name in PORT_NAMES}


#: The longest path of a kernel's ipc socket: a unix socket's address holds 107 bytes (Linux;
#: 103 on macOS), and ZeroMQ refuses longer ones.
IPC_PATH_MAX = 100


def ipc_directory(runtime: str, tag: str) -> str:
    """A new directory for a kernel's unix sockets, 0700 (mkdtemp): in ``runtime`` (the remote
    runtime dir), or in the temporary directory when the runtime dir's path is too long for a
    socket address. Its name starts with ``.sik-<tag>-`` (the connection file's tag)."""
    prefix = ".sik-%s-" % tag
    directory = runtime if len(runtime) + len(prefix) + 12 <= IPC_PATH_MAX else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=prefix, dir=directory)


def remove_ipc_directory(path: str) -> None:
    """Remove a kernel's socket directory (ipc_directory), whatever the kernel left in it."""
    if os.path.basename(path).startswith(".sik-"):
        shutil.rmtree(path, ignore_errors=True)


def speaks_ipc(argv: "list[str]") -> bool:
    """Whether the kernel started by ``argv`` can listen on ZeroMQ's ipc transport: ipykernel
    (``-m ipykernel_launcher``, ``-m ipykernel``) can; of others we cannot know."""
    return any(arg in ("ipykernel_launcher", "ipykernel") or arg.endswith("ipykernel_launcher.py") for arg in argv)
