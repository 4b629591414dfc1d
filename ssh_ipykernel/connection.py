"""The local connection file Jupyter writes for us, read and checked.

The proxy deliberately does not import jupyter_client here: reading five ports and a key is a
json.load, and keeping zmq/tornado out of the proxy keeps it small (it only forwards ports).
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Dict, Tuple, TypedDict

from .exceptions import ConnectionFileError

#: The five ZMQ channels of a Jupyter kernel, in the order we forward them.
CHANNELS: Tuple[str, ...] = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class ConnectionInfo(TypedDict):
    """What a Jupyter connection file holds (the parts we use)."""

    ip: str
    transport: str
    key: str
    signature_scheme: str
    kernel_name: str
    shell_port: int
    iopub_port: int
    stdin_port: int
    control_port: int
    hb_port: int


_KERNEL_FILE_RE = re.compile(r"^kernel-(?P<id>[A-Za-z0-9_.-]+)\.json$")


def kernel_id_from_path(path: str) -> str:
    """Jupyter names connection files ``kernel-<id>.json``; fall back to the file's base name."""
    name = os.path.basename(path)
    m = _KERNEL_FILE_RE.match(name)
    if m:
        return m.group("id")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(name)[0]) or "kernel"


def _fail(path: str, what: str) -> ConnectionFileError:
    return ConnectionFileError(
        f"connection file {path}: {what}. It should be the JSON file Jupyter writes for a kernel "
        "({connection_file} in the kernelspec argv); start the kernel from Jupyter or pass a valid -f."
    )


def load_connection_file(path: str) -> ConnectionInfo:
    """Read and validate ``path``; raise ConnectionFileError saying what is wrong and what to do."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise _fail(path, "does not exist") from None
    except PermissionError:
        raise _fail(path, "is not readable by this user") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise _fail(path, "does not hold a JSON object")
    return validate_connection_info(raw, path)


def validate_connection_info(raw: Dict[str, object], path: str = "<connection info>") -> ConnectionInfo:
    """Check types and values of a parsed connection file."""
    ports: Dict[str, int] = {}
    for name in CHANNELS:
        value = raw.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise _fail(path, f"{name} is {value!r}, expected a port number between 1 and 65535")
        ports[name] = value
    if len(set(ports.values())) != len(ports):
        raise _fail(path, "two channels share the same port")
    transport = raw.get("transport", "tcp")
    if transport != "tcp":
        raise _fail(path, f"transport is {transport!r}; only 'tcp' can be forwarded over SSH")
    ip = raw.get("ip", "127.0.0.1")
    if not isinstance(ip, str) or not _is_loopback(ip):
        raise _fail(
            path,
            f"ip is {ip!r}; ssh_ipykernel forwards to 127.0.0.1 only, so that nobody else on the "
            "network can reach the kernel (leave KernelManager.ip at its default)",
        )
    key = raw.get("key", "")
    if not isinstance(key, str):
        raise _fail(path, "key is not a string")
    scheme = raw.get("signature_scheme", "hmac-sha256")
    if not isinstance(scheme, str) or not re.match(r"^hmac-[a-z0-9]+$", scheme):
        raise _fail(path, f"signature_scheme {scheme!r} is not of the form hmac-<hash>")
    kernel_name = raw.get("kernel_name", "")
    if not isinstance(kernel_name, str):
        kernel_name = ""
    info: ConnectionInfo = {
        "ip": "127.0.0.1" if ip == "localhost" else ip,
        "transport": "tcp",
        "key": key,
        "signature_scheme": scheme,
        "kernel_name": kernel_name,
        **ports,  # type: ignore[misc]
    }
    return info


def _is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback and ipaddress.ip_address(ip).version == 4
    except ValueError:
        return False
