"""The options model: what every command takes, parsed once into typed values, defaults defined once.

The proxy's command line is the one spelling of a kernel's options. ``manage add`` records a
:class:`ProxyOptions` as the kernelspec argv Jupyter runs (:meth:`ProxyOptions.argv`), and the
proxy, like ``manage list/show/check`` reading a kernelspec back (specs.py), parses that argv with
the proxy's click command (proxycli.py) into the same :class:`ProxyOptions`
(:meth:`ProxyOptions.from_params`). Below the CLI everything takes these typed values:

* :class:`ConnectionOptions` -- how to reach the host; every transport is built from them
  (transport.build_transport);
* :class:`LaunchOptions` -- which kernel the remote agent starts and how;
* :class:`Lifetime` -- how long the remote kernel outlives a lost connection;
* :class:`ProxyOptions` -- one SSH kernel: those groups, the remote python, its environment,
  sudo, and the local connection file;
* :class:`ConnectOptions` -- ``ssh-ipykernel connect``.

Nothing here imports click or the transports: both import this module.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Tuple, TypedDict

from .exceptions import UsageError
from .hosts import HostSpec, parse_host
from .remote.protocol import CONNECTION_FILE_FIELD, DEFAULT_CLIENT_TIMEOUT, DEFAULT_WARM_IDLE, KERNEL_NAME_RE
from .remote.streams import DEFAULT_LIMIT

if TYPE_CHECKING:
    from .slurm import SlurmOptions

__all__ = [
    "CONNECTION_FILE_FIELD", "DEFAULT_CLIENT_TIMEOUT", "DEFAULT_GRACE", "DEFAULT_GRACE_TEXT", "DEFAULT_PERSIST",
    "DEFAULT_TIMEOUT", "DEFAULT_TRANSPORT", "DEFAULT_LOGIN_WAIT", "DEFAULT_LOGIN_WAIT_TEXT", "DEFAULT_LOGIN_PERSIST",
    "DEFAULT_LOGIN_PERSIST_TEXT", "DEFAULT_OUTPUT_BUFFER", "DEFAULT_OUTPUT_BUFFER_TEXT", "parse_size", "format_size",
    "parse_login_wait", "parse_login_persist", "ConnectOptions", "ConnectionOptions", "LaunchOptions", "Lifetime",
    "ProxyOptions", "ProxyParams", "check_launch", "check_python", "check_ssh_config", "format_duration",
    "EnvItem", "expand_env_words", "parse_env", "parse_grace", "read_env", "read_env_item", "split_kernel_cmd",
    "write_env_item", "DEFAULT_WARM", "DEFAULT_WARM_TEXT", "parse_warm",
]

# -- defaults: the only place they are written ----------------------------------------------------

#: Seconds allowed to connect and to start the remote kernel (--timeout).
DEFAULT_TIMEOUT = 30.0
#: How long a remote kernel outlives a lost connection (--grace): a laptop's lunch break.
DEFAULT_GRACE: Optional[float] = 3600.0
#: Seconds the shared SSH connection to a host stays open after its last kernel ended (--persist).
DEFAULT_PERSIST = 60.0
#: How long a kernel on a host that needs a person to log in waits for `ssh-ipykernel login`
#: (--login-wait): time to read the Jupyter log, open a terminal and type a password and a code.
DEFAULT_LOGIN_WAIT = 600.0
#: How long the connection `ssh-ipykernel login` opens stays up after its last kernel ended
#: (login --persist): a working day, so that the morning's login lasts until the evening.
DEFAULT_LOGIN_PERSIST: Optional[float] = 36000.0
#: --transport when not given: OpenSSH if an ssh client is on PATH, else paramiko.
DEFAULT_TRANSPORT = "auto"
# DEFAULT_CLIENT_TIMEOUT (the keeper forgets a proxy silent this long) comes from remote/protocol.py:
# the keeper, shipped stdlib-only, cannot import this package; the local side imports from it.
#: What each side keeps of the kernel's channels while they cannot be delivered (--output-buffer):
#: remote/streams.py's default, so that the keeper has the same without being told.
DEFAULT_OUTPUT_BUFFER = DEFAULT_LIMIT
DEFAULT_OUTPUT_BUFFER_TEXT = "64M"
MIN_OUTPUT_BUFFER = 64 << 10

NEVER = ("never", "forever", "inf", "infinite")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- values -----------------------------------------------------------------------------------------

#: What a POSIX shell (and shlex) splits words on.
_SHELL_WHITESPACE = frozenset(" \t\r\n")


@dataclass(frozen=True)
class EnvItem:
    """One ``--env`` argument and what it was read as (see :func:`read_env_item`)."""

    text: str  # the argv element, as given
    variables: Tuple[Tuple[str, str], ...]  # (name, value) in order
    as_words: bool  # read the ssh_ipykernel 1.x way: shell words, one variable per word

    def note(self) -> Optional[str]:
        """The log line for an argument read as shell words, which the exact form would read as
        one variable (None for one read exactly). It names the variables, never their values:
        the Jupyter log is no place for a token passed in the environment."""
        if not self.as_words:
            return None
        names = [name for name, _ in self.variables]
        got = (f"{len(names)} variables, {', '.join(names)}" if len(names) > 1
               else f"one variable, {names[0]}, its quotes removed")
        first = self.text.partition("=")[0]
        if _ENV_NAME_RE.match(first):
            other = (f"to give {first} all the text after '{first}=' instead, quote that text inside the "
                     f"argument as a shell would: --env \"{first}='...'\"")
        else:
            other = "the exact form, one variable per --env, is NAME=VALUE"
        return (f"--env {first}=... holds whitespace and only NAME=VALUE words, so it is read as shell words "
                f"(ssh_ipykernel 1.x's form; quotes honoured, nothing expanded): {got}; {other}")


def _env_error(item: str) -> UsageError:
    msg = (
        f"--env {item!r} is not VAR=VALUE with a valid variable name (letters, digits and "
        f"_, not starting with a digit); several variables go in several --env options"
    )
    return UsageError(msg)


def _shell_words(text: str) -> Optional[List[Tuple[str, str]]]:
    """``text`` split like a POSIX shell splits words (never expanded, never run), when every word
    is NAME=VALUE; else None."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unclosed quote: not shell words
        return None
    pairs = [word.partition("=") for word in words]
    if not pairs or not all(sep and _ENV_NAME_RE.match(name) for name, sep, _ in pairs):
        return None
    return [(name, value) for name, _, value in pairs]


def read_env_item(item: str) -> EnvItem:
    """Read one ``--env`` argument; the rule (README, "Coming from ssh_ipykernel 1.x"):

    * an argument that contains whitespace and, split the way a POSIX shell splits words (quotes
      honoured; nothing expanded; never run through a shell), is only NAME=VALUE words, is read
      as those words, one variable each: 1.x wrote ``--env "VAR1=demo VAR2=abc"``;
    * any other argument is one variable, NAME=VALUE, the value kept exactly (spaces, quotes, $);
      an empty one (1.x's ``add_kernel(env="")``) sets nothing.

    :func:`write_env_item` writes every value so that it reads back exactly.
    """
    if "\0" in item:
        name = item.partition("=")[0]
        raise UsageError(f"--env {name}: the value contains a NUL byte")
    if not item.strip(" \t\r\n"):
        return EnvItem(item, (), as_words=False)  # 1.x's add_kernel(env="") wrote --env ""
    if _SHELL_WHITESPACE.intersection(item):
        words = _shell_words(item)
        if words is not None:
            return EnvItem(item, tuple(words), as_words=True)
    name, sep, value = item.partition("=")
    if not sep or not _ENV_NAME_RE.match(name):
        raise _env_error(item)
    return EnvItem(item, ((name, value),), as_words=False)


def write_env_item(name: str, value: str) -> str:
    """The ``--env`` argument that :func:`read_env_item` reads back as exactly ``name=value``:
    ``NAME=VALUE`` as is, or with the value shell-quoted where, as is, it would read as 1.x's
    shell words (a value like ``'x B=y'``)."""
    plain = f"{name}={value}"
    if not read_env_item(plain).as_words:
        return plain
    return f"{name}={shlex.quote(value)}"


def read_env(items: Iterable[str]) -> Tuple[Dict[str, str], Tuple[str, ...]]:
    """``--env`` arguments into the variables (a later one wins) and the notes to log for those
    read as shell words (:meth:`EnvItem.note`)."""
    env: Dict[str, str] = {}
    notes: List[str] = []
    for item in items:
        read = read_env_item(item)
        env.update(read.variables)
        note = read.note()
        if note:
            notes.append(note)
    return env, tuple(notes)


def parse_env(items: Iterable[str]) -> Dict[str, str]:
    """``--env`` arguments into a dict (:func:`read_env_item` says how each is read)."""
    return read_env(items)[0]


def is_env_word(arg: str) -> bool:
    """Whether ``arg`` starts like a variable assignment (NAME=...)."""
    name, sep, _ = arg.partition("=")
    return bool(sep) and bool(_ENV_NAME_RE.match(name))


#: The spellings of --env: 1.x took several words after one of them (argparse nargs='*').
ENV_FLAGS = ("-e", "--env")


def expand_env_words(args: List[str], value_options: Iterable[str] = ()) -> List[str]:
    """1.x's ``--env A=1 B=2`` (several NAME=VALUE words after one --env or -e, argparse's
    nargs='*') as ``--env A=1 --env B=2``; a bare ``--env`` (1.x allowed none) is dropped. The
    values of ``value_options`` (the options that take one) are passed over, whatever they are."""
    out: List[str] = []
    i = 0
    takes_value = frozenset(value_options)
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        if arg in ENV_FLAGS:
            i += 1
            if i < len(args) and not args[i].startswith("-"):
                out += ["--env", args[i]]
                i += 1
                while i < len(args) and is_env_word(args[i]):
                    out += ["--env", args[i]]
                    i += 1
            continue
        out.append(arg)
        i += 1
        if arg in takes_value and i < len(args):
            out.append(args[i])
            i += 1
    return out


def _duration(value: str, option: str, advice: str) -> float:
    """Seconds in ``value`` (seconds, or a number with unit s/m/h/d); UsageError naming
    ``option`` and saying what to ``give`` otherwise."""
    match = _DURATION_RE.match(value)
    if not match:
        raise UsageError(f"{option} {value!r} is not a duration: give {advice}")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_grace(value: str) -> Optional[float]:
    """``--grace``: seconds, or a number with unit s/m/h/d; ``never`` (None) keeps the kernel."""
    if value.strip().lower() in NEVER:
        return None
    return _duration(value, "--grace", "seconds (600), a number with a unit (30m, 2h, 1d) or 'never'")


#: --warm's spelling of "no warm kernels".
WARM_OFF = "off"


def parse_warm(value: str) -> Optional[float]:
    """``--warm``: how long the host's warm pool outlives its last kernel (a duration), or
    ``off`` (None: every kernel starts cold)."""
    if value.strip().lower() in (WARM_OFF, "no", "false", "none"):
        return None
    return _duration(value, "--warm", "seconds (600), a number with a unit (10m, 1h), or 'off' for no warm kernels")


def parse_login_wait(value: str) -> float:
    """``--login-wait``: seconds, or a number with unit s/m/h/d (0: fail at once)."""
    return _duration(value, "--login-wait",
                     "seconds (600) or a number with a unit (10m, 1h); 0 fails at once, as without a login")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: str, option: str = "--output-buffer") -> int:
    """A size in bytes: a number, or with a unit k, M, G (64M)."""
    match = _SIZE_RE.match(str(value))
    if not match or float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()] < MIN_OUTPUT_BUFFER:
        msg = (f"{option} {value!r} is not a size of at least 64k: give bytes or a number with a unit "
               f"(512k, 64M, 1G)")
        raise UsageError(msg)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def format_size(size: int) -> str:
    """A size as parse_size reads it back: 64M, 512k, or bytes."""
    for unit in ("G", "M", "k"):
        scale = _SIZE_UNITS[unit.lower()]
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def parse_login_persist(value: str) -> Optional[float]:
    """``login --persist``: a duration (8h, 30m, 3600) or ``never`` (None: until logout)."""
    if value.strip().lower() in NEVER:
        return None
    match = _DURATION_RE.match(value)
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0.0
    if seconds < 1:
        msg = (f"--persist {value!r} is not a duration of at least a second: give seconds (3600), a number "
               f"with a unit (30m, 8h, 1d) or 'never' (until `ssh-ipykernel logout`)")
        raise UsageError(msg)
    return seconds


def format_duration(seconds: Optional[float]) -> str:
    """The shortest spelling parse_grace reads back as ``seconds`` (None: ``never``)."""
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}"


#: --grace's default as the help shows it and as click hands it over when not given.
DEFAULT_GRACE_TEXT = format_duration(DEFAULT_GRACE)
DEFAULT_LOGIN_WAIT_TEXT = format_duration(DEFAULT_LOGIN_WAIT)
DEFAULT_LOGIN_PERSIST_TEXT = format_duration(DEFAULT_LOGIN_PERSIST)
#: How long a host's warm pool (ready-imported kernels) outlives its last kernel (--warm).
DEFAULT_WARM: Optional[float] = DEFAULT_WARM_IDLE
DEFAULT_WARM_TEXT = format_duration(DEFAULT_WARM)


def check_python(python: Optional[str]) -> Optional[str]:
    """The remote interpreter or prefix: any path, but one line of printable text."""
    if python is None:
        return None
    if not python.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in python):
        raise UsageError(f"--python {python!r} must be a non-empty path without control characters")
    return python


def check_ssh_config(path: Optional[str]) -> Optional[str]:
    """An ssh -F file must exist (ssh would otherwise fail with a less helpful message)."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UsageError(f"--ssh-config {path}: no such file (give the path of an ssh_config file)")
    return os.path.abspath(path)


def _one_line(option: str, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if not value.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise UsageError(f"{option} {value!r} must be non-empty and without control characters")
    return value


def split_kernel_cmd(text: str, connection_file: Optional[str] = None) -> Tuple[str, ...]:
    """``--kernel-cmd`` text -> argv (shell-like splitting; it is never run through a shell).

    Jupyter fills ``{connection_file}`` into every argument of a kernelspec's argv, this one
    included, with the LOCAL path; the proxy (which gets that path with -f) puts the field back,
    and the remote agent substitutes the remote connection file.
    """
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"--kernel-cmd {text!r}: {e} (quote it as you would in a shell)") from None
    if connection_file:
        paths = {connection_file, os.path.realpath(connection_file)}
        for path in sorted(paths, key=len, reverse=True):
            argv = [arg.replace(path, CONNECTION_FILE_FIELD) for arg in argv]
    if not argv:
        raise UsageError("--kernel-cmd is empty: give the command that starts the kernel on the remote")
    if "\0" in text:
        raise UsageError("--kernel-cmd contains a NUL byte")
    if not any(CONNECTION_FILE_FIELD in arg for arg in argv):
        msg = (
            f"--kernel-cmd {text!r} does not say where the connection file goes: put "
            f"{CONNECTION_FILE_FIELD} where the kernel takes it, e.g. --kernel-cmd "
            f"'/opt/julia/bin/julia -i /opt/ijulia/kernel.jl {CONNECTION_FILE_FIELD}'"
        )
        raise UsageError(msg)
    return tuple(argv)


# -- the groups -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectionOptions:
    """How to reach the host: what every transport is built from (transport.build_transport)."""

    host: HostSpec
    ssh_config: Optional[str] = None  # ssh -F file (absolute); None: the user's ~/.ssh/config
    timeout: float = DEFAULT_TIMEOUT  # seconds to connect (and, for the proxy, to start the kernel)
    transport: str = DEFAULT_TRANSPORT  # openssh, paramiko or auto (transport.resolve_kind)
    persist: float = DEFAULT_PERSIST  # seconds the host's shared connection outlives its last kernel
    login_wait: float = DEFAULT_LOGIN_WAIT  # seconds a kernel waits for `ssh-ipykernel login`


@dataclass(frozen=True)
class LaunchOptions:
    """Which kernel the remote agent starts and how (--remote-kernel, --kernel-cmd, --workdir,
    --pre-command); the default is ipykernel with the --python interpreter."""

    remote_kernel: Optional[str] = None
    kernel_cmd: Optional[Tuple[str, ...]] = None  # argv, ``{connection_file}`` where it goes
    workdir: Optional[str] = None
    pre_command: Optional[str] = None  # one command line for the remote login shell
    #: --kernel-cmd as the user wrote it: what a kernelspec records (its quoting is theirs).
    kernel_cmd_text: Optional[str] = None
    #: Seconds the warm pool outlives its last kernel (--warm); None: no warm kernels.
    warm: Optional[float] = DEFAULT_WARM

    def params(self) -> Dict[str, object]:
        """The agent parameters these add (data, never part of a command line)."""
        return {
            "remote_kernel": self.remote_kernel,
            "kernel_cmd": list(self.kernel_cmd) if self.kernel_cmd is not None else None,
            "workdir": self.workdir,
            "warm": self.warm,
        }

    def written_warm(self) -> Optional[str]:
        """--warm's value in a kernelspec; None when it is the default."""
        if self.warm == DEFAULT_WARM:
            return None
        return WARM_OFF if self.warm is None else format_duration(self.warm)

    def written_kernel_cmd(self) -> Optional[str]:
        """--kernel-cmd's value in a kernelspec: as written, else the argv shell-quoted."""
        if self.kernel_cmd_text is not None or self.kernel_cmd is None:
            return self.kernel_cmd_text
        return shlex.join(self.kernel_cmd)


def check_launch(
    *,
    remote_kernel: Optional[str] = None,
    kernel_cmd: Optional[str] = None,
    workdir: Optional[str] = None,
    pre_command: Optional[str] = None,
    connection_file: Optional[str] = None,
    warm: Optional[str] = None,
) -> LaunchOptions:
    """Validate which kernel to start and how; see LaunchOptions."""
    if remote_kernel is not None and kernel_cmd is not None:
        raise UsageError("--remote-kernel and --kernel-cmd exclude each other: give one of them")
    if remote_kernel is not None and not KERNEL_NAME_RE.match(remote_kernel):
        msg = (
            f"--remote-kernel {remote_kernel!r} is not a kernelspec name (letters, digits, '.', "
            f"'_', '-'); `jupyter kernelspec list` on the remote shows the names"
        )
        raise UsageError(msg)
    if pre_command is not None and (not pre_command.strip() or "\0" in pre_command):
        raise UsageError("--pre-command is empty or contains a NUL byte: give one shell command line")
    return LaunchOptions(
        remote_kernel=remote_kernel,
        kernel_cmd=split_kernel_cmd(kernel_cmd, connection_file) if kernel_cmd is not None else None,
        workdir=_one_line("--workdir", workdir),
        pre_command=pre_command,
        kernel_cmd_text=kernel_cmd,
        warm=parse_warm(warm) if warm is not None else DEFAULT_WARM,
    )


@dataclass(frozen=True)
class Lifetime:
    """How long the remote kernel outlives a lost connection (the keeper's parameters)."""

    grace: Optional[float] = DEFAULT_GRACE  # seconds; None: never ends for want of a proxy
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT  # silence after which the keeper drops a proxy
    #: --grace as the user wrote it: what a kernelspec records ("2h" stays "2h").
    grace_text: Optional[str] = None

    def written_grace(self) -> Optional[str]:
        """--grace's value in a kernelspec; None when it is the default (nothing written)."""
        if self.grace_text is not None:
            return None if self.grace_text == DEFAULT_GRACE_TEXT else self.grace_text.strip()
        return None if self.grace == DEFAULT_GRACE else format_duration(self.grace)


# -- the proxy's command line -------------------------------------------------------------------------

class ProxyParams(TypedDict, total=False):
    """The proxy's options as its click command hands them over (proxycli.py); ``manage add`` and
    ``check`` pass the subset they take. specs.py shows a kernelspec's options in this form."""

    host: str
    python: Optional[str]
    ssh_config: Optional[str]
    timeout: float
    env: Tuple[str, ...]  # VAR=VALUE, as given
    sudo: bool
    grace: str  # as given: a duration or 'never'
    persist: float
    login_wait: str  # as given: a duration
    transport: str
    client_timeout: float
    output_buffer: str  # as given: a size
    warm: str  # as given: a duration or 'off'
    remote_kernel: Optional[str]
    kernel_cmd: Optional[str]  # as given: one shell-like line
    workdir: Optional[str]
    pre_command: Optional[str]
    slurm: Optional[str]  # as given: sbatch options on one line
    queue_timeout: str  # as given: a duration
    connection_file: str
    log_level: str
    log_file: Optional[str]


def _option(name: str, value: str) -> List[str]:
    """``[name, value]``, or ``[name=value]`` for a value starting with ``~``: jupyter_client's
    launch_kernel runs os.path.expanduser on every argv element, which would turn a remote
    ``~/env`` into the LOCAL home; it leaves ``--python=~/env`` alone."""
    return [f"{name}={value}"] if value.startswith("~") else [name, value]


@dataclass(frozen=True)
class ProxyOptions:
    """One SSH kernel's options: the proxy's command line, typed (what a kernelspec records)."""

    connection: ConnectionOptions
    python: Optional[str] = None  # remote interpreter or prefix; None: python3 on the remote PATH
    env: Mapping[str, str] = field(default_factory=dict)  # --env, for the remote kernel
    sudo: bool = False
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    lifetime: Lifetime = field(default_factory=Lifetime)
    #: Bytes of the kernel's channels kept while they cannot be delivered (an outage), per proxy.
    output_buffer: int = DEFAULT_OUTPUT_BUFFER
    #: Jupyter's connection file (-f); in a kernelspec, the field Jupyter fills in.
    connection_file: str = CONNECTION_FILE_FIELD
    #: How --env arguments that read differently in 1.x's form were read: the proxy logs them.
    env_notes: Tuple[str, ...] = field(default=(), compare=False)
    #: --slurm and --queue-timeout: the kernel runs in a SLURM job (slurm.py); None: on the host.
    slurm: Optional["SlurmOptions"] = None
    #: --queue-timeout as the user wrote it (what a kernelspec records).
    queue_timeout_text: Optional[str] = None

    @property
    def host(self) -> HostSpec:
        return self.connection.host

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, vet_ssh_config: bool = True) -> "ProxyOptions":
        """Parse the proxy's click values (ProxyParams; ``add`` and ``check`` pass the subset
        they take, the rest are the defaults) into the model; raise HostSpecError/UsageError,
        checked in the order the options' help lists them.

        ``vet_ssh_config=False`` takes --ssh-config as written, without requiring the file (a
        kernelspec read back for ``check NAME``, where ssh itself reports a missing file).
        """
        host = parse_host(params["host"])
        python = check_python(params.get("python"))
        env, env_notes = read_env(params.get("env") or ())
        ssh_config = check_ssh_config(params.get("ssh_config")) if vet_ssh_config else params.get("ssh_config")
        connection_file = params.get("connection_file")
        launch = check_launch(remote_kernel=params.get("remote_kernel"), kernel_cmd=params.get("kernel_cmd"),
                              workdir=params.get("workdir"), pre_command=params.get("pre_command"),
                              connection_file=connection_file, warm=params.get("warm"))
        grace_text = params.get("grace")
        lifetime = Lifetime(
            grace=parse_grace(grace_text) if grace_text is not None else DEFAULT_GRACE,
            client_timeout=params.get("client_timeout", DEFAULT_CLIENT_TIMEOUT),
            grace_text=grace_text,
        )
        connection = ConnectionOptions(
            host=host, ssh_config=ssh_config, timeout=params.get("timeout", DEFAULT_TIMEOUT),
            transport=params.get("transport", DEFAULT_TRANSPORT), persist=params.get("persist", DEFAULT_PERSIST),
            login_wait=parse_login_wait(params.get("login_wait") or DEFAULT_LOGIN_WAIT_TEXT),
        )
        output_buffer = parse_size(params.get("output_buffer") or DEFAULT_OUTPUT_BUFFER_TEXT)
        slurm, queue_timeout_text = check_slurm(params.get("slurm"), params.get("queue_timeout"),
                                                sudo=bool(params.get("sudo")))
        return cls(connection=connection, python=python, env=env, sudo=bool(params.get("sudo")), launch=launch,
                   lifetime=lifetime, output_buffer=output_buffer, connection_file=connection_file or CONNECTION_FILE_FIELD,
                   env_notes=env_notes, slurm=slurm, queue_timeout_text=queue_timeout_text)

    def written_persist(self) -> Optional[float]:
        """--persist in a kernelspec; None when it is the default."""
        return None if self.connection.persist == DEFAULT_PERSIST else self.connection.persist

    def written_transport(self) -> Optional[str]:
        """--transport in a kernelspec; None when it is the default (auto)."""
        return None if self.connection.transport == DEFAULT_TRANSPORT else self.connection.transport

    def argv(self, python_executable: Optional[str] = None) -> List[str]:
        """The command line Jupyter runs: this python, -m ssh_ipykernel, the options that differ
        from their defaults, -f and the connection file. Parsed by the proxy's click command, it
        gives these options back (from_params)."""
        connection, launch = self.connection, self.launch
        argv = [python_executable or sys.executable, "-m", "ssh_ipykernel", "--host", connection.host.spec]
        if self.python:
            argv += _option("--python", self.python)
        if connection.ssh_config:
            argv += ["--ssh-config", connection.ssh_config]
        if connection.timeout != DEFAULT_TIMEOUT:
            argv += ["--timeout", f"{connection.timeout:g}"]
        for name, value in self.env.items():
            argv += ["--env", write_env_item(name, value)]
        if self.sudo:
            argv.append("--sudo")
        persist, transport = self.written_persist(), self.written_transport()
        if persist is not None:
            argv += ["--persist", f"{persist:g}"]
        if transport is not None:
            argv += ["--transport", transport]
        if connection.login_wait != DEFAULT_LOGIN_WAIT:
            argv += ["--login-wait", format_duration(connection.login_wait)]
        for option, value in (("--remote-kernel", launch.remote_kernel), ("--kernel-cmd", launch.written_kernel_cmd()),
                              ("--workdir", launch.workdir), ("--pre-command", launch.pre_command),
                              ("--grace", self.lifetime.written_grace())):
            if value is not None:
                argv += _option(option, value)
        if self.lifetime.client_timeout != DEFAULT_CLIENT_TIMEOUT:
            argv += ["--client-timeout", f"{self.lifetime.client_timeout:g}"]
        if self.output_buffer != DEFAULT_OUTPUT_BUFFER:
            argv += ["--output-buffer", format_size(self.output_buffer)]
        if self.slurm is not None:
            argv += [f"--slurm={self.slurm.text}"]  # one word even when it starts with "-" or "~"
            if self.queue_timeout_text is not None:
                argv += ["--queue-timeout", self.queue_timeout_text]
        warm = launch.written_warm()
        if warm is not None:
            argv += ["--warm", warm]
        argv += ["-f", self.connection_file]
        return argv


def check_slurm(text: Optional[str], queue_timeout: Optional[str], *,
                sudo: bool = False) -> "Tuple[Optional[SlurmOptions], Optional[str]]":
    """--slurm and --queue-timeout, checked (slurm.parse_slurm_options); (None, None) without --slurm."""
    from .slurm import DEFAULT_QUEUE_TIMEOUT, parse_slurm_options

    if text is None:
        if queue_timeout is not None:
            raise UsageError("--queue-timeout only applies with --slurm")
        return None, None
    if sudo:
        raise UsageError("--sudo and --slurm exclude each other: a job runs as you, on the node the scheduler picks")
    seconds = DEFAULT_QUEUE_TIMEOUT
    if queue_timeout is not None:
        match = _DURATION_RE.match(queue_timeout)
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0.0
        if seconds < 1:
            raise UsageError(f"--queue-timeout {queue_timeout!r} is not a duration of at least a second: "
                             f"give seconds (600) or a number with a unit (30m, 2h)")
    return parse_slurm_options(text, seconds), (queue_timeout.strip() if queue_timeout is not None else None)


# -- ssh-ipykernel connect -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectOptions:
    """``ssh-ipykernel connect``: a kernel somebody else started, and where its tunnels end."""

    connection: ConnectionOptions
    remote_file: str  # the kernel's connection file on the remote
    local_file: Optional[str] = None  # None: in Jupyter's runtime dir (connect.default_local_file)
    python: Optional[str] = None  # the remote python that reads remote_file

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ConnectOptions":
        """Parse connect's click values (same checks, same order as the proxy's)."""
        host = parse_host(params["host"])
        python = check_python(params.get("python"))
        connection = ConnectionOptions(
            host=host, ssh_config=check_ssh_config(params.get("ssh_config")),
            timeout=params.get("timeout", DEFAULT_TIMEOUT), transport=params.get("transport", DEFAULT_TRANSPORT),
        )
        return cls(connection=connection, remote_file=params["remote_file"], local_file=params.get("local_file"),
                   python=python)
