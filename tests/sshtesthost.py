"""What tests see of an SSH test host, whatever builds it (netns or Docker).

``SSHTestHost`` is the interface the integration tests use.  ``ClientFiles``
is the client side: an ``ssh -F`` config with one alias per host plus aliases
that fail in known ways, with its keys and known_hosts files.  Nothing is
written to the real ``~/.ssh``.  Shared by tests/nshosts.py (network-namespace
hosts) and the Docker host of tests/integration/conftest.py.  Pytest-free:
bench and demo scripts import it (through nshosts).
"""
from __future__ import annotations

import os, shlex, shutil, subprocess  # noqa: E401
from pathlib import Path
from typing import Optional, Sequence

REMOTE_USER = "sikuser"
REMOTE_ENV_PREFIX = "/mnt/remote/envs/py3"
REMOTE_PATH = f"{REMOTE_ENV_PREFIX}/bin:/usr/local/bin:/usr/bin:/bin"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python, without ipykernel
#: The PATH this test run started with. Tests of the paramiko transport take every ssh client
#: off PATH (tests/integration/conftest.py) for what they start; what builds, restarts and looks
#: at the hosts keeps this one (``host_env()``), and its ssh client (SSH).
ORIGINAL_PATH = os.environ.get("PATH", os.defpath)
SSH = shutil.which("ssh", path=ORIGINAL_PATH) or "ssh"


def host_env() -> dict:
    """The environment for the test hosts' own commands (ip, sshd, mount, ssh): PATH as at start."""
    return {**os.environ, "PATH": ORIGINAL_PATH}


class HostSetupError(RuntimeError):
    """A test host could not be built; the message says why."""


def _run(argv: Sequence[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=host_env())
    if check and proc.returncode:
        raise HostSetupError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair without passphrase; return the public key line."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return Path(f"{path}.pub").read_text().strip()


class ClientFiles:
    """Client-side ssh material in a private (0700) directory, for ``ssh -F``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config = directory / "ssh_config"
        self.identity = directory / "id_ed25519"
        self.authorized_key = keygen(self.identity, "sik-client")
        self.unauthorized_identity = directory / "id_ed25519_unauthorized"
        keygen(self.unauthorized_identity, "sik-unauthorized")
        self.wrong_host_key = keygen(directory / "wrong_host_key", "sik-wrong-host-key")
        self.known_hosts = directory / "known_hosts"
        self.known_hosts_changed = directory / "known_hosts_changed"
        self.known_hosts_empty = directory / "known_hosts_empty"
        for path in (self.known_hosts, self.known_hosts_changed, self.known_hosts_empty):
            path.touch(mode=0o600)
        self._blocks: dict[str, str] = {}
        self._write()

    def add_host(self, alias: str, address: str, port: int, user: str, host_key: str,
                 proxy_jump: Optional[str] = None, refused_port: int = 9, bare_addresses: Sequence[str] = ()) -> None:
        """Register ``alias`` plus ``-badkey``/``-changedkey``/``-unknownkey``/``-refused``; and
        ``bare_addresses`` (host key, user and key for an address given as is, any port)."""
        target = address if port == 22 else f"[{address}]:{port}"
        key = " ".join(host_key.split()[:2])
        with open(self.known_hosts, "a") as fh:
            fh.write(f"{target} {key}\n")
            for bare in bare_addresses:
                fh.write(f"[{bare}]:{port} {key}\n")
        with open(self.known_hosts_changed, "a") as fh:
            fh.write(f"{target} {' '.join(self.wrong_host_key.split()[:2])}\n")

        def block(name: str, identity: Path = self.identity, known: Path = self.known_hosts,
                  strict: str = "yes", to_port: int = port) -> str:
            lines = [f"Host {name}", f"  HostName {address}", f"  Port {to_port}", f"  User {user}",
                     f'  IdentityFile "{identity}"', "  IdentitiesOnly yes",
                     f'  UserKnownHostsFile "{known}"', "  GlobalKnownHostsFile /dev/null",
                     f"  StrictHostKeyChecking {strict}", "  BatchMode no"]
            lines += [f"  ProxyJump {proxy_jump}"] if proxy_jump else []
            return "\n".join(lines) + "\n"

        self._blocks[alias] = "\n".join([
            block(alias),
            block(f"{alias}-badkey", identity=self.unauthorized_identity),
            block(f"{alias}-changedkey", known=self.known_hosts_changed),
            block(f"{alias}-unknownkey", known=self.known_hosts_empty, strict="ask"),
            block(f"{alias}-refused", to_port=refused_port),
        ] + ([f"Host {' '.join(bare_addresses)}\n  User {user}\n  IdentityFile \"{self.identity}\"\n"
               f"  IdentitiesOnly yes\n  UserKnownHostsFile \"{self.known_hosts}\"\n"
               "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode no\n"]
              if bare_addresses else []))
        self._write()

    def remove_host(self, alias: str) -> None:
        """Drop the aliases of a host (its known_hosts lines are harmless)."""
        self._blocks.pop(alias, None)
        self._write()

    def _write(self) -> None:
        text = "# generated by tests/nshosts.py\n\n" + "\n".join(self._blocks.values())
        self.config.write_text(text)
        self.config.chmod(0o600)  # ssh rejects a config writable by others


class SSHTestHost:
    """What tests see of a remote host, whatever builds it (netns or Docker).

    Subclasses implement ``remote_pids(pattern)`` (pids of the user's processes
    whose command line matches the regex), ``link_down()``/``link_up()`` (cut
    the path: connects time out; ``cut(kind)``/``restore(kind)`` for both kinds of cut), ``restart_sshd()`` (restart the listener;
    established sessions survive), ``sshd_log()`` and ``close()``.
    """

    def __init__(self, *, alias: str, address: str, port: int, hostname: str, user: str,
                 ssh_config: Path, env_prefix: str = REMOTE_ENV_PREFIX) -> None:
        self.alias, self.address, self.port = alias, address, port
        self.hostname, self.user, self.ssh_config = hostname, user, ssh_config
        self.env_prefix = env_prefix
        self.env_python = f"{env_prefix}/bin/python"
        self.python_without_ipykernel = SYSTEM_PYTHON
        self.home = f"/home/{user}"
        self.runtime_dir = f"{self.home}/.local/share/jupyter/runtime"
        self.aliases = {kind: f"{alias}-{kind}" for kind in ("badkey", "changedkey", "unknownkey", "refused")}

    def ssh_argv(self, *args: str, alias: Optional[str] = None, options: Sequence[str] = ()) -> list[str]:
        """``ssh -F <config> [options] <alias> [args]``."""
        return [SSH, "-F", str(self.ssh_config), *options, alias or self.alias, *args]

    def run(self, cmd: str, timeout: float = 30.0, alias: Optional[str] = None,
            options: Sequence[str] = ()) -> subprocess.CompletedProcess:
        """Run shell command ``cmd`` on the remote as the user; never prompts."""
        argv = self.ssh_argv(cmd, alias=alias, options=["-o", "BatchMode=yes", *options])
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=host_env())

    def remote_pids(self, pattern: str) -> list[int]:
        raise NotImplementedError

    def link_down(self) -> None:
        raise NotImplementedError

    def link_up(self) -> None:
        raise NotImplementedError

    def cut(self, kind: str = "blackhole") -> None:
        """Cut the host off: ``blackhole`` (packets vanish, connects time out: link_down()) or
        ``down`` (the link and its route are gone, connects fail at once). Use it through
        kernels.cut(), which always restores."""
        if kind != "blackhole":
            raise NotImplementedError(kind)
        self.link_down()

    def restore(self, kind: str = "blackhole") -> None:
        """Undo cut(kind)."""
        if kind != "blackhole":
            raise NotImplementedError(kind)
        self.link_up()

    def restart_sshd(self) -> None:
        raise NotImplementedError

    def sshd_log(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Tear the host down; safe to call twice."""

    def __enter__(self) -> "SSHTestHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.alias} {self.user}@{self.address}:{self.port} ({self.hostname})>"
