"""Turn what the OpenSSH client printed into a typed error that says what to do.

Pure text in, exception out, so every branch is unit tested with real ssh output. This reads
ssh's own output only: the paramiko backend and ``manage check`` build the same errors from
their exceptions (failures.py has the sentences all of them share).
"""
from __future__ import annotations

import re
from typing import Optional

from .. import exceptions as exc
from . import failures

#: Prompts that mean ssh wants a person to type something. A kernel started by Jupyter has no
#: one to type, so each of these ends the attempt with an error instead of hanging.
PROMPT_RE = re.compile(
    rb"(?i)(are you sure you want to continue connecting[^\n]*\?\s*$"
    rb"|password[^\n]{0,60}:\s*$"
    rb"|passphrase for key[^\n]*:\s*$"
    rb"|verification code[^\n]*:\s*$"
    rb"|one-time password[^\n]*:\s*$"
    rb"|enter pin[^\n]*:\s*$"
    rb"|\(yes/no[^\n]*\)\?\s*$)",
    re.M,
)


def _config_hint(ssh_config: Optional[str]) -> str:
    return f" -F {ssh_config}" if ssh_config else ""


def classify_ssh_failure(
    output: str,
    *,
    host: str,
    spec: str,
    ssh_config: Optional[str] = None,
    timeout: Optional[float] = None,
) -> exc.SSHConnectionError:
    """The error for a failed connection attempt, given everything ssh printed."""
    text = output.replace("\r", "")
    cmd = f"ssh{_config_hint(ssh_config)} {spec}"
    if re.search(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for \S+ has changed", text):
        offending = re.search(r"Offending \S+ key in (\S+)", text)
        where = f" (the old key is at {offending.group(1)})" if offending else ""
        remove = re.search(r"(ssh-keygen -f .* -R .*)", text)
        remove_cmd = remove.group(1).strip() if remove else f"ssh-keygen -R {host}"
        return exc.HostKeyError(
            f"the host key of {host} has CHANGED since it was recorded in known_hosts{where}. "
            f"Someone may be intercepting the connection, or the server was reinstalled. Check the "
            f"new key with the server's administrator, then remove the old one ({remove_cmd}) "
            f"and connect once with `{cmd}` to record the new one. ssh_ipykernel never bypasses "
            f"host key checking.",
            host=host, detail=_tail(text),
        )
    if (
        "continue connecting" in text
        or re.search(r"No \S+ host key is known for", text)
        or "Host key verification failed" in text
    ):
        return exc.HostKeyError(
            f"the host key of {host} is not in known_hosts yet, and ssh_ipykernel does not accept "
            f"unknown host keys on your behalf. Connect once in a terminal with `{cmd}`, check "
            f"the fingerprint it shows, answer yes, then start the kernel again.",
            host=host, detail=_tail(text),
        )
    if "Could not resolve hostname" in text or "Name or service not known" in text:
        return failures.not_resolved(host, spec, detail=_tail(text))
    if "Connection refused" in text:
        return failures.refused(host, detail=_tail(text))
    if re.search(r"No route to host|Network is unreachable|Host is unreachable", text):
        return failures.unreachable(host, detail=_tail(text))
    if re.search(r"(?i)timed out|timeout", text) and "Permission denied" not in text:
        return failures.timed_out(host, timeout, detail=_tail(text))
    if PROMPT_RE.search(text.encode("utf-8", "replace")):
        return login_required(host, spec, ssh_config, detail=_tail(text))
    if "Permission denied" in text or "Too many authentication failures" in text:
        return exc.AuthenticationError(
            f"{host} refused authentication. Check the user name (user@host or User in ssh "
            f"config) and that your public key is in ~/.ssh/authorized_keys there; if the key "
            f"has a passphrase, load it with ssh-add. Try `{cmd}` in a terminal",
            host=host, detail=_tail(text),
        )
    if re.search(r"Bad configuration option|Bad owner or permissions|no argument after keyword|"
                 r"Can't open user config file|: line \d+:", text):
        return exc.SSHConnectionError(
            f"ssh could not use its configuration for {host}; fix the file it names",
            host=host, detail=_tail(text),
        )
    if "Connection closed by" in text or "Connection reset" in text or "kex_exchange" in text:
        return failures.closed_during_login(host, detail=_tail(text))
    return failures.could_not_connect(host, detail=_tail(text))


def login_command(spec: str, ssh_config: Optional[str] = None) -> str:
    """The command that opens the shared connection of ``spec`` by hand."""
    return f"ssh-ipykernel login{f' --ssh-config {ssh_config}' if ssh_config else ''} {spec}"


def login_required(host: str, spec: str, ssh_config: Optional[str] = None, *,
                   detail: str = "") -> exc.LoginRequiredError:
    """Logging in to ``host`` needs a person, and no login is open."""
    return exc.LoginRequiredError(
        f"logging in to {host} needs a password, passphrase or code typed by a person. Run "
        f"`{login_command(spec, ssh_config)}` in a terminal (in JupyterLab: File > New > Terminal): "
        f"the kernels of {host} then use that connection. Or use key authentication: ssh-copy-id "
        f"to install your key on {host}, ssh-add to load a key that has a passphrase into your agent",
        host=host, detail=detail,
    )


def _tail(text: str, lines: int = 8) -> str:
    kept = [line for line in text.splitlines() if line.strip() and not line.startswith("@@@")]
    return "\n".join(kept[-lines:])
