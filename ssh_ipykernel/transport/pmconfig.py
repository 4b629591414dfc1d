"""What the paramiko backend takes from the user's ssh config, and its host key check.

paramiko's SSHConfig parses the file (Host and Match blocks, tokens such as %h); this module
picks the options the backend honours (HostName, User, Port, IdentityFile, IdentitiesOnly,
ProxyJump, ProxyCommand, UserKnownHostsFile, GlobalKnownHostsFile, HostKeyAlias) and refuses,
with the option to use instead, the ones whose meaning it cannot keep: silently ignoring an
``Include`` or a ``PKCS11Provider`` would log in differently from ``ssh``, or not at all.

The host key check is strict whatever the config says: an unknown or changed key is an error
that names the fingerprint and the file, never accepted on the user's behalf.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import os
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import paramiko

from .. import exceptions as exc
from ..hosts import HostSpec, parse_host

#: Options whose meaning this backend cannot keep, and why; the user is told to use
#: --transport openssh (or to drop the option for this host).
UNSUPPORTED = {
    "include": "Include (paramiko's config parser does not read included files)",
    "pkcs11provider": "PKCS11Provider (smart-card keys)",
    "securitykeyprovider": "SecurityKeyProvider (FIDO keys)",
    "certificatefile": "CertificateFile (OpenSSH certificates)",
    "proxyusefdpass": "ProxyUseFdpass",
}
#: Values of these options that change how to connect, which we cannot honour.
UNSUPPORTED_VALUES = {
    ("gssapiauthentication", "yes"): "GSSAPIAuthentication yes (Kerberos)",
}
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


@dataclass
class HostSettings:
    """How to reach one host (the target, or one hop of a ProxyJump chain)."""

    alias: str  # as given: what known_hosts hints and messages name
    hostname: str
    port: int
    user: str
    identity_files: List[str] = field(default_factory=list)
    identities_only: bool = False
    proxy_jump: List[str] = field(default_factory=list)  # hops, nearest first
    proxy_command: Optional[str] = None
    known_hosts: List[str] = field(default_factory=list)
    host_key_alias: Optional[str] = None

    @property
    def known_hosts_name(self) -> str:
        """The name this host's key is recorded under in known_hosts."""
        name = self.host_key_alias or self.hostname
        return name if self.port == 22 else f"[{name}]:{self.port}"


def load_config(path: Optional[str]) -> paramiko.SSHConfig:
    """The ssh config file (``--ssh-config``, else ~/.ssh/config if there is one)."""
    path = path or os.path.expanduser("~/.ssh/config")
    if not os.path.isfile(path):
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(path)
    except Exception as e:  # paramiko raises ConfigParseError, but also ValueError on odd lines
        msg = f"paramiko cannot parse the ssh config {path}: {e}; fix it, or use --transport openssh"
        raise exc.UsageError(msg) from e


def _words(value: str) -> List[str]:
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()


def resolve(host: HostSpec, config: paramiko.SSHConfig, *, config_path: Optional[str] = None) -> HostSettings:
    """The settings for ``host`` from ``config``; UsageError for options we cannot honour."""
    where = config_path or "~/.ssh/config"
    try:
        conf: Dict[str, object] = dict(config.lookup(host.host))
    except Exception as e:  # paramiko's own limits (e.g. CanonicalizeHostname without CanonicalDomains)
        msg = (f"paramiko cannot read the ssh config ({where}) for {host.host}: {type(e).__name__} {e}; "
               f"fix the config, or use --transport openssh")
        raise exc.UsageError(msg) from e
    for key, value in conf.items():
        what = UNSUPPORTED.get(key) or UNSUPPORTED_VALUES.get((key, str(value).lower()))
        if what:
            msg = (f"the ssh config ({where}) for {host.host} uses {what}, which the paramiko transport "
                   f"does not support: use --transport openssh, or remove it for this host")
            raise exc.UsageError(msg)
    hostname = str(conf.get("hostname") or host.host)
    try:
        port = host.port or int(str(conf.get("port", 22)))
    except ValueError:
        raise exc.UsageError(f"the ssh config ({where}) gives {host.host} a bad Port {conf['port']!r}") from None
    user = host.user or str(conf.get("user") or "") or getpass.getuser()
    identities = [os.path.expanduser(p) for p in conf.get("identityfile", [])]  # type: ignore[union-attr]
    jump = str(conf.get("proxyjump", "none"))
    command = str(conf.get("proxycommand", "none"))
    if jump.lower() != "none" and command.lower() != "none":
        jump = "none"  # as ssh: the first one obtained wins; paramiko does not keep the order
    known = _words(str(conf.get("userknownhostsfile", ""))) or list(DEFAULT_KNOWN_HOSTS)
    known += _words(str(conf.get("globalknownhostsfile", ""))) or list(DEFAULT_GLOBAL_KNOWN_HOSTS)
    return HostSettings(
        alias=host.host,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=identities,
        identities_only=str(conf.get("identitiesonly", "no")).lower() == "yes",
        proxy_jump=[hop for hop in jump.split(",") if hop] if jump.lower() != "none" else [],
        proxy_command=None if command.lower() == "none" else command,
        known_hosts=[os.path.expanduser(p) for p in known if p.lower() != "none"],
        host_key_alias=str(conf["hostkeyalias"]) if conf.get("hostkeyalias") else None,
    )


def resolve_hop(hop: str, config: paramiko.SSHConfig, *, config_path: Optional[str] = None) -> HostSettings:
    """A ProxyJump hop (``[user@]host[:port]`` or ``ssh://...``, or an alias) with its own config."""
    return resolve(parse_host(hop), config, config_path=config_path)


# -- host keys ------------------------------------------------------------------------------------
def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_known_hosts(paths: Sequence[str]) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for path in paths:
        if os.path.isfile(path):
            try:
                keys.load(path)
            except OSError:
                continue
    return keys


def preferred_key_types(known: Optional[Dict[str, paramiko.PKey]], available: Sequence[str]) -> Tuple[str, ...]:
    """Host key algorithms in the order to offer: those of keys already known first (as ssh
    does), so that a server with several keys shows the one we can check."""
    if not known:
        return tuple(available)
    first: List[str] = []
    for name in known:
        names = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa") if name == "ssh-rsa" else (name,)
        first += [n for n in names if n in available and n not in first]
    return tuple(first + [n for n in available if n not in first])


def check_host_key(settings: HostSettings, key: paramiko.PKey, known: paramiko.HostKeys) -> None:
    """Raise HostKeyError unless ``key`` is the one known_hosts records for this host."""
    entry = known.lookup(settings.known_hosts_name)
    files = ", ".join(settings.known_hosts[:1]) or "known_hosts"
    kind = key.get_name()
    if entry is not None and kind in entry and entry[kind] == key:
        return
    print_fp = f"{kind} key {fingerprint(key)}"
    if entry:
        raise exc.HostKeyError(
            f"the host key of {settings.alias} has CHANGED since it was recorded in known_hosts "
            f"({files}): the server now shows {print_fp}. Someone may be intercepting the "
            f"connection, or the server was reinstalled. Check the new key with the server's "
            f"administrator, then replace the old one (ssh-keygen -f {files} -R "
            f"'{settings.known_hosts_name}'). ssh_ipykernel never bypasses host key checking.",
            host=settings.alias,
        )
    raise exc.HostKeyError(
        f"the host key of {settings.alias} ({settings.known_hosts_name}) is not in known_hosts "
        f"({files}) yet, and ssh_ipykernel does not accept unknown host keys on your behalf. The "
        f"server shows {print_fp}: check it with the server's administrator, then add it to "
        f"{files} (ssh-keyscan -p {settings.port} {settings.hostname}, or connect once with ssh "
        f"and answer yes), and start the kernel again.",
        host=settings.alias,
    )
