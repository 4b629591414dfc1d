"""What the paramiko backend takes from the user's ssh config, and its host key check.

paramiko's SSHConfig parses the file (Host and Match blocks, tokens such as %h); this module
picks the options the backend honours (HostName, User, Port, IdentityFile, IdentitiesOnly,
ProxyJump, ProxyCommand, UserKnownHostsFile, GlobalKnownHostsFile, HostKeyAlias; Include is
expanded here, paramiko does not read included files) and refuses, with the option to use
instead, the ones whose meaning it cannot keep: silently ignoring a ``PKCS11Provider`` would
log in differently from ``ssh``, or not at all.

The host key check is strict whatever the config says: an unknown or changed key is an error
that names the fingerprint and the file, never accepted on the user's behalf.
"""
from __future__ import annotations

import base64
import getpass
import glob
import hashlib
import hmac
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

from .. import exceptions as exc
from ..hosts import HostSpec, parse_host

class _MatchExec:
    """What paramiko's config module uses ``invoke`` for, ``run(command).ok`` for ``Match exec``,
    done as ssh does it: the command through the user's shell with stdin and stdout on
    /dev/null. invoke would mirror the proxy's stdin into it, and costs every paramiko proxy
    57 ms and 7 MB of imports (46 -> 39 MB resident)."""

    @staticmethod
    def run(command: str, hide: object = None, warn: bool = True) -> SimpleNamespace:
        shell = os.environ.get("SHELL") or "/bin/sh"
        try:
            code = subprocess.run([shell, "-c", command], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL).returncode
        except OSError:
            code = 127
        return SimpleNamespace(ok=code == 0)


def _import_paramiko():
    """paramiko, with _MatchExec in place of invoke (which it is kept from importing)."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        import paramiko
    else:
        sys.modules["invoke"] = None  # type: ignore[assignment]  # "import invoke" fails, paramiko goes on
        try:
            import paramiko
        finally:
            del sys.modules["invoke"]
    import paramiko.config

    paramiko.config.invoke = _MatchExec
    return paramiko


paramiko = _import_paramiko()


#: Options whose meaning this backend cannot keep, and why; the user is told to use
#: --transport openssh (or to drop the option for this host).
UNSUPPORTED = {
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
    """The ssh config file (``--ssh-config``, else ~/.ssh/config if there is one), with the files
    it includes (paramiko's parser does not read them; see ``expand_includes``)."""
    path = path or os.path.expanduser("~/.ssh/config")
    if not os.path.isfile(path):
        return paramiko.SSHConfig()
    text = "\n".join(expand_includes(path))
    try:
        return paramiko.SSHConfig.from_text(text)
    except Exception as e:  # paramiko raises ConfigParseError, but also ValueError on odd lines
        msg = f"paramiko cannot parse the ssh config {path}: {e}; fix it, or use --transport openssh"
        raise exc.UsageError(msg) from e


#: How deep Includes may nest, as in ssh (readconf.c READCONF_MAX_DEPTH).
MAX_INCLUDE_DEPTH = 16


def _keyword(line: str) -> Tuple[str, str]:
    """(lower-case keyword, rest) of a config line; ('', '') for blanks and comments."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return "", ""
    word = re.split(r"[\s=]", stripped, maxsplit=1)[0]
    return word.lower(), stripped[len(word):].lstrip(" \t=").strip()


def expand_includes(path: str, depth: int = 0) -> List[str]:
    """The lines of the config ``path`` with every ``Include`` replaced by the included files'
    lines, as ssh reads them: globs in lexical order, ``~`` expanded, relative paths in ~/.ssh
    (ssh treats a ``-F`` file as a user config too), files that do not exist skipped.

    An Include inside a ``Host``/``Match`` block applies only when that block does; that is kept
    for included files made of options (they land in the block, which is restated after them).
    An included file with Host or Match blocks of its own inside a conditional block has no
    faithful text form, and is refused naming --transport openssh.
    """
    if depth > MAX_INCLUDE_DEPTH:
        raise exc.UsageError(f"the ssh config {path} nests Include more than {MAX_INCLUDE_DEPTH} "
                             f"deep (a loop?); fix it, or use --transport openssh")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise exc.UsageError(f"cannot read the ssh config {path}: {e.strerror}") from e
    out: List[str] = []
    header: Optional[str] = None  # the Host/Match line of the block we are in, None: global
    for line in lines:
        keyword, rest = _keyword(line)
        if keyword in ("host", "match"):
            header = None if keyword == "host" and rest.split() == ["*"] else line
        if keyword != "include":
            out.append(line)
            continue
        for pattern in _words(rest):
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
            for included in sorted(glob.glob(pattern)):
                if not os.path.isfile(included):
                    continue
                sub = expand_includes(included, depth + 1)
                if header is not None and any(_keyword(x)[0] in ("host", "match") for x in sub):
                    raise exc.UsageError(
                        f"the ssh config {path} includes {included} inside the block "
                        f"'{header.strip()}', and that file has Host or Match blocks of its own: the "
                        f"paramiko transport cannot read that as ssh does. Move the Include out of "
                        f"the block, or use --transport openssh")
                out += sub
                out.append(header if header is not None else "Host *")  # back in the enclosing block
    return out


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


@dataclass
class KnownKey:
    """One line of a known_hosts file."""

    patterns: List[str]  # host patterns, hashed (|1|salt|hash) or not, "!" for negation
    key_type: str
    blob: bytes
    marker: str = ""  # "@revoked", "@cert-authority" or ""

    def matches(self, name: str) -> bool:
        """As ssh matches a line: some pattern matches ``name`` and no negated one does."""
        name = name.lower()
        found = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            pattern = pattern[1:] if negated else pattern
            if pattern.startswith("|1|"):
                hit = _hashed_matches(pattern, name)
            else:
                hit = _wildcard_matches(pattern.lower(), name)
            if hit and negated:
                return False
            found = found or hit
        return found


def _wildcard_matches(pattern: str, name: str) -> bool:
    """ssh's host patterns: ``*`` and ``?`` only (``[host]:port`` brackets are literal)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _hashed_matches(pattern: str, name: str) -> bool:
    try:
        salt, digest = (base64.b64decode(part) for part in pattern[3:].split("|", 1))
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


class KnownHosts:
    """The known_hosts files, read as ssh reads them. paramiko's HostKeys keeps one key per
    host and type, so a host listed twice (an old key left above a new one) would look changed
    to it; and it ignores @revoked lines. Here every matching line counts, as with ssh, and a
    revoked key is refused wherever it is listed."""

    def __init__(self, paths: Sequence[str] = ()) -> None:
        self.keys: List[KnownKey] = []
        for path in paths:
            self.load(path)

    def load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return
        for line in lines:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = fields.pop(0) if fields[0].startswith("@") else ""
            if len(fields) < 3:
                continue
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except ValueError:
                continue
            self.keys.append(KnownKey(fields[0].split(","), fields[1], blob, marker))

    def for_host(self, name: str) -> List[KnownKey]:
        """The plain (unmarked) keys recorded for ``name``, in file order."""
        return [k for k in self.keys if not k.marker and k.matches(name)]

    def types_for(self, name: str) -> List[str]:
        return list(dict.fromkeys(k.key_type for k in self.for_host(name)))

    def revoked(self, blob: bytes) -> bool:
        return any(k.marker == "@revoked" and k.blob == blob for k in self.keys)


def load_known_hosts(paths: Sequence[str]) -> KnownHosts:
    return KnownHosts(paths)


def preferred_key_types(known: Optional[Sequence[str]], available: Sequence[str]) -> Tuple[str, ...]:
    """Host key algorithms in the order to offer: those of keys already known first (as ssh
    does), so that a server with several keys shows the one we can check."""
    if not known:
        return tuple(available)
    first: List[str] = []
    for name in known:
        names = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa") if name == "ssh-rsa" else (name,)
        first += [n for n in names if n in available and n not in first]
    return tuple(first + [n for n in available if n not in first])


def check_host_key(settings: HostSettings, key: paramiko.PKey, known: KnownHosts) -> None:
    """Raise HostKeyError unless ``key`` is one known_hosts records for this host (and not revoked)."""
    entries = known.for_host(settings.known_hosts_name)
    files = ", ".join(settings.known_hosts[:1]) or "known_hosts"
    kind = key.get_name()
    print_fp = f"{kind} key {fingerprint(key)}"
    blob = key.asbytes()
    if known.revoked(blob):
        raise exc.HostKeyError(
            f"the host key of {settings.alias} ({print_fp}) is marked @revoked in known_hosts: "
            f"ssh_ipykernel will not connect with it. Ask the server's administrator for its "
            f"current key.", host=settings.alias)
    if any(entry.blob == blob for entry in entries):
        return
    if entries:
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
