"""The remote start command: what the login shell runs to get from its prompt to the agent.

The only things on the remote command line are fixed shell text, the shell-quoted python path
and a fixed one-line loader (bundle.LOADER). Everything else (the agent's source, the session
key, the environment) goes over the session's stdin as data.

A start command is a ``StartCommand``: ``build(python) -> str``. ``LoginShell`` is the one used
today; it is composed of ``Step``s, each of which may add shell text before the python lookup
(``prelude``) and a prefix to the final ``exec`` (``exec_prefix``): ``PreCommand`` and ``Sudo``.
A batch scheduler (SLURM's ``srun``, say) is one more step, or a ``StartCommand`` of its own
that wraps a ``LoginShell``'s text; whatever it does, the agent still reads its source and
parameters from stdin and writes its events to stdout.
"""
from __future__ import annotations

import abc
from typing import Optional, Sequence

from ..remote import protocol
from .bundle import LOADER


def sh_quote(text: str) -> str:
    """One single-quoted word for any POSIX shell and zsh, always quoted: ``shlex.quote`` leaves
    words like ``=0`` bare, and zsh expands a leading ``=`` (``=cmd`` is the path of cmd)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def quote_remote_path(path: str) -> str:
    """Quote a path for the remote sh, keeping a leading ``~/`` meaning the remote home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + sh_quote(path[2:])
    return sh_quote(path)


class StartCommand(abc.ABC):
    """How the remote side starts the agent's python. Called by ``RemoteKernel`` for every
    session (start, attach, watch) and by ``remoteinfo.run_probe``; the result is the one
    command string given to ``Transport.start_command``."""

    @abc.abstractmethod
    def build(self, python: Optional[str]) -> str:
        """The command for the remote login shell; ``python`` is ``--python`` (None: python3
        from the remote PATH). Must run the loader with that python, stdin and stdout untouched."""


class Step:
    """One composable piece of a LoginShell: shell text before the python lookup, and a prefix
    for the ``exec`` of python. Both must be fixed text or values quoted with sh_quote."""

    def prelude(self) -> str:
        return ""

    def exec_prefix(self) -> str:
        return ""


class PreCommand(Step):
    """``--pre-command``: the user's own command line, run by their login shell before anything
    else so that it can change the environment python starts in (activate a conda env, ``module
    load``).

    It arrives as ONE single-quoted word that eval parses on its own: whatever it holds cannot
    reach into the wrapper around it. ``command eval``: in POSIX shells a failing special builtin
    (``. missing-file``, a syntax error) would otherwise end the whole shell before we can say so;
    zsh's ``command`` means "external command", its ``builtin`` is the same thing. stdin is
    /dev/null (the agent's source follows on ours), stdout goes to stderr (ours carries events).
    """

    TEMPLATE = (
        '_sik_e=command; [ -n "$ZSH_VERSION" ] && _sik_e=builtin; '
        '$_sik_e eval {command} </dev/null >&2 || {{ echo "ssh_ipykernel: the pre-command failed with '
        'exit code $?" >&2; exit %d; }}; '
    ) % protocol.EXIT_PRE_COMMAND

    def __init__(self, command: str) -> None:
        self.command = command

    def prelude(self) -> str:
        return self.TEMPLATE.format(command=sh_quote(self.command))


class Sudo(Step):
    """``--sudo``: python runs under passwordless sudo (``-n``: never a prompt)."""

    PREFIX = "sudo -n -- "

    def exec_prefix(self) -> str:
        return self.PREFIX


class LoginShell(StartCommand):
    """The user's login shell (sh, bash, dash, zsh) resolves ``--python`` and execs the loader.

    ``--python`` may be an interpreter path, an environment prefix (prefix/bin/python) or a
    command name on the remote PATH (only an executable file counts: not a shell keyword, alias
    or function); not found: exit EXIT_PYTHON_NOT_FOUND. $N and $P are only ever expanded inside
    double quotes.
    """

    TEMPLATE = (
        '{prelude}N={python}; P="$N"; '
        'case "$P" in */*) ;; *) P=$(command -v "$P" 2>/dev/null) || P=;; esac; '
        'case "$P" in */*) ;; *) P=/nonexistent;; esac; '
        'if [ -d "$P" ]; then P="$P/bin/python"; fi; '
        'if [ ! -x "$P" ] || [ -d "$P" ]; then {notfound}; fi; '
        'exec {prefix}"$P" -c {loader}'
    )
    NOT_FOUND = 'echo "ssh_ipykernel: python not found: $N" >&2; exit %d' % protocol.EXIT_PYTHON_NOT_FOUND

    def __init__(self, steps: Sequence[Step] = (), *, program: Optional[str] = None) -> None:
        self.steps = tuple(steps)
        #: What python runs (``-c``): the loader that reads the agent from stdin, unless a
        #: scheduler gives a program of its own (slurm.py: the job's launcher, a step's spawn).
        self.program = program

    def build(self, python: Optional[str]) -> str:
        return self.TEMPLATE.format(
            prelude="".join(step.prelude() for step in self.steps),
            python=quote_remote_path(python or "python3"),
            notfound=self.NOT_FOUND,
            prefix="".join(step.exec_prefix() for step in self.steps),
            loader=sh_quote(LOADER if self.program is None else self.program),
        )


def start_command(*, sudo: bool = False, pre_command: Optional[str] = None) -> StartCommand:
    """The start command for today's options (the factory a scheduler option would extend)."""
    steps = []  # type: list[Step]
    if pre_command:
        steps.append(PreCommand(pre_command))
    if sudo:
        steps.append(Sudo())
    return LoginShell(steps)


def build_remote_command(python: Optional[str], *, sudo: bool = False, pre_command: Optional[str] = None) -> str:
    """The command string the remote login shell runs (see the module docstring)."""
    return start_command(sudo=sudo, pre_command=pre_command).build(python)
