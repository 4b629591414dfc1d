"""``python -m ssh_ipykernel.manage``: register SSH hosts as Jupyter kernels, list, show, remove
and check them.

``add`` (the default when the first argument is an option, so ``manage --host btest ...``
and ssh_ipykernel 1.x's ``manage -H btest -p /opt/env ...`` keep working) writes a kernelspec
whose argv starts the local proxy (``python -m ssh_ipykernel``) with the options given, and
installs it with jupyter_client's KernelSpecManager. The other subcommands read kernelspecs
back through specs.py; ``upgrade`` rewrites those of an older form in today's.

The Python API (api.py) is importable from here, as 1.x's ``add_kernel`` was.
"""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import click

from . import __version__
from .exceptions import LoginRequiredError
from .api import KernelName, add_kernel, check_kernel, list_kernels, remove_kernel, upgrade_kernel, upgrade_kernels
from .proxycli import (EnvWordsCommand, common_options, grace_option, launch_options, login_wait_option,
                       output_buffer_option, persist_option, transport_option, warm_option)
from .report import format_table, report_errors

if TYPE_CHECKING:
    from .check import Target

__all__ = ["KernelName", "add_kernel", "check_kernel", "list_kernels", "main", "manage", "remove_kernel",
           "upgrade_kernel", "upgrade_kernels"]

CONTEXT = {"help_option_names": ["-h", "--help"]}
PREFIX_HELP = "Also look under DIR/share/jupyter/kernels (where `add --prefix DIR` writes), first."


class DefaultGroup(click.Group):
    """A group that runs ``add`` when the first argument is an option rather than a subcommand."""

    default_command = "add"

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        if args and args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings=CONTEXT, no_args_is_help=True)
@click.version_option(__version__, prog_name="ssh_ipykernel")
def manage() -> None:
    """Register SSH hosts as Jupyter kernels, and list, show, check, upgrade and remove them.

    Without a subcommand, `add` runs (it is the default):

    \b
        python -m ssh_ipykernel.manage --host btest --python /opt/conda/envs/py311

    writes the kernelspec "SSH btest"; pick it in Jupyter and your code runs on btest.
    `check` tells what is wrong when it does not work.
    """


def _location(location: str, prefix: Optional[str]) -> Optional[str]:
    return sys.prefix if location == "sys-prefix" else prefix


@manage.command(name="add", cls=EnvWordsCommand, context_settings=CONTEXT)
@common_options
@grace_option
@persist_option
@login_wait_option
@output_buffer_option
@warm_option
@transport_option
@launch_options
@click.option("-d", "--display-name", metavar="TEXT",
              help='Name shown in kernel pickers. Default: "SSH <host>" (plus the remote kernel\'s name).')
@click.option("--name", metavar="NAME", help="Kernelspec name. Default: ssh_<host> (plus _<remote kernel>).")
@click.option("--language", metavar="NAME",
              help="Language recorded in the kernelspec. Default: python, or the remote kernelspec's.")
@click.option("--check", "check_first", is_flag=True,
              help="Check the whole path first (as `check` does, with a real kernel); write nothing if it fails.")
@click.option("--user", "location", flag_value="user", default=True,
              help="Install for the current user (default).")
@click.option("--sys-prefix", "location", flag_value="sys-prefix",
              help="Install into this Python's prefix (e.g. the active virtualenv).")
@click.option("--prefix", metavar="DIR", type=click.Path(file_okay=False),
              help="Install under DIR/share/jupyter/kernels.")
def add_command(
    display_name: Optional[str], name: Optional[str], language: Optional[str], check_first: bool, location: str,
    prefix: Optional[str], **params: Any,
) -> None:
    """Write and install a kernelspec that runs a kernel on HOST over SSH.

    With --remote-kernel, HOST is asked (over SSH, now) for that kernelspec's language, display
    name, interrupt mode and logos, which the local kernelspec takes over.
    """
    from .check import Checker, Target
    from .kernelspec import (KernelSpecOptions, build_kernelspec, check_kernel_name, default_kernel_name,
                             install_kernelspec, kernelspec_exists)
    from .options import ProxyOptions

    def run() -> int:
        proxy = ProxyOptions.from_params(params)
        for note in proxy.env_notes:
            click.echo(f"Note: {note}")
        host, remote_kernel = proxy.host.spec, proxy.launch.remote_kernel
        kernel_name = check_kernel_name(name) if name else default_kernel_name(host, remote_kernel)
        options = KernelSpecOptions(proxy=proxy, display_name=display_name, name=kernel_name,
                                    language=language or "python", debugger=proxy.launch.kernel_cmd is None)
        checker = Checker(Target(proxy), on_step=print_step if check_first else lambda step: None)
        if check_first:
            click.echo(f"Checking {host} before writing the kernelspec {kernel_name}")
        if remote_kernel and not check_first:
            click.echo(f"Asking {host} for its kernelspec {remote_kernel} ...")
        if remote_kernel or check_first:
            checker.run(until="kernel command")
            if checker.failed and not check_first:
                raise checker.failed.error  # type: ignore[misc]
            if not checker.failed and remote_kernel:
                take_over_remote_kernelspec(options, checker.probe, display_name, language)
        spec = build_kernelspec(options)
        if check_first:
            checker.target.kernelspec = spec
            checker.run()
            if print_summary(checker, host):
                click.echo("Nothing written: fix the step that failed, then run this command again.")
                return checker.failed.error.exit_code  # type: ignore[union-attr]
        install_prefix = _location(location, prefix)
        replaced = kernelspec_exists(kernel_name, install_prefix, user=install_prefix is None)
        path = install_kernelspec(spec, kernel_name, user=install_prefix is None, prefix=install_prefix,
                                  resources=options.resources)
        click.echo(f"{'Replaced' if replaced else 'Installed'} kernelspec {kernel_name} ({spec['display_name']}) in {path}")
        click.echo(f"Pick \"{spec['display_name']}\" in Jupyter, or try: jupyter console --kernel {kernel_name}")
        return 0

    report_errors(run)


def take_over_remote_kernelspec(options: Any, probe: Any, display_name: Optional[str], language: Optional[str]) -> None:
    """Language, display name, interrupt mode, debugger flag and logos from the remote kernelspec."""
    kernel = probe.part("kernel")
    options.language = language or str(kernel.get("language") or "")
    remote_name = kernel.get("display_name") or options.proxy.launch.remote_kernel
    options.display_name = display_name or f"SSH {options.proxy.host.spec} ({remote_name})"
    options.interrupt_mode = kernel.get("interrupt_mode") or "signal"
    options.debugger = bool((kernel.get("metadata") or {}).get("debugger"))
    options.resources = dict(probe.resources)


# -- list / show / upgrade / remove -------------------------------------------------------------

#: How list and show name a kernelspec's form (specs.InstalledSpec.form).
FORM_LABELS = {"1.x": "1.x (upgrade)", "older": "older (upgrade)", "unreadable": "unreadable (add it again)"}


@manage.command(name="list", context_settings=CONTEXT)
@click.option("--prefix", metavar="DIR", type=click.Path(file_okay=False), help=PREFIX_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(prefix: Optional[str], as_json: bool) -> None:
    """List the SSH kernelspecs Jupyter sees: name, host, what runs remotely, where it is, and
    its FORM: "current", or "1.x" / "older" for a kernelspec `upgrade` would rewrite."""
    from .specs import CURRENT, list_specs

    def run() -> int:
        specs = list_specs(prefix)
        if as_json:
            click.echo(json.dumps([s.as_dict() for s in specs], indent=1))
        elif not specs:
            click.echo("No SSH kernelspecs. Add one with: python -m ssh_ipykernel.manage --host HOST --python PATH")
        else:
            forms = {s.name: s.form() for s in specs}
            rows = [[s.name, s.display_name, s.host, s.remote(), s.resource_dir, FORM_LABELS.get(forms[s.name], forms[s.name])]
                    for s in specs]
            click.echo(format_table(["NAME", "DISPLAY NAME", "HOST", "REMOTE", "LOCATION", "FORM"], rows))
            if any(form != CURRENT for form in forms.values()):
                click.echo("\nKernelspecs of an older form run as they are; `python -m ssh_ipykernel.manage "
                           "upgrade --all --dry-run` shows how `upgrade --all` would rewrite them.")
        return 0

    report_errors(run)


@manage.command(name="show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--prefix", metavar="DIR", type=click.Path(file_okay=False), help=PREFIX_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (kernel.json and the parsed options).")
def show_command(name: str, prefix: Optional[str], as_json: bool) -> None:
    """Show what the SSH kernelspec NAME runs, option by option."""
    from .specs import get_spec

    def run() -> int:
        spec = get_spec(name, prefix)
        if as_json:
            click.echo(json.dumps(spec.as_dict(), indent=1))
            return 0
        o = spec.options
        rows: List[Tuple[str, Any]] = [
            ("name", spec.name), ("display name", spec.display_name),
            ("language", spec.spec.get("language")), ("location", spec.resource_dir),
            ("host", o.get("host")), ("remote python", o.get("python") or "python3 (remote PATH)"),
            ("remote kernel", o.get("remote_kernel")), ("kernel command", o.get("kernel_cmd")),
            ("workdir", o.get("workdir")), ("pre-command", o.get("pre_command")),
            ("slurm", o.get("slurm")), ("queue timeout", o.get("queue_timeout")),
            ("env", _shown_env(spec)), ("sudo", "yes" if o.get("sudo") else None),
            ("ssh config", o.get("ssh_config")), ("timeout", o.get("timeout")),
            ("interrupt mode", spec.spec.get("interrupt_mode")), ("command", spec.command_line()),
            ("form", FORM_LABELS.get(spec.form(), spec.form())),
        ]
        for label, value in rows:
            if value is not None and value != "":
                lines = str(value).splitlines() or [""]
                click.echo(f"{label + ':':<16}{lines[0]}")
                for line in lines[1:]:
                    click.echo(f"{'':<16}{line}")
        return 0

    report_errors(run)


@manage.command(name="upgrade", context_settings=CONTEXT)
@click.argument("name", required=False)
@click.option("--all", "all_specs", is_flag=True, help="Every SSH kernelspec of an older form.")
@click.option("--dry-run", is_flag=True, help="Show the old and the new argv; write nothing.")
@click.option("--prefix", metavar="DIR", type=click.Path(file_okay=False), help=PREFIX_HELP)
def upgrade_command(name: Optional[str], all_specs: bool, dry_run: bool, prefix: Optional[str]) -> None:
    """Rewrite the SSH kernelspec NAME (or --all of them) in today's form, in place: kernelspecs
    written by ssh_ipykernel 1.x or with another older argv. Display name, host, python, env,
    sudo, timeout and every other option stay, as do the other keys of kernel.json and the other
    files in its directory (logos)."""
    import shlex

    from .exceptions import SSHKernelError, UsageError
    from .specs import get_spec, list_specs, upgrade_spec

    def run() -> int:
        if bool(name) == all_specs:
            raise UsageError("upgrade takes a kernelspec NAME or --all (see `list`), one of them")
        specs = [get_spec(name, prefix)] if name else [s for s in list_specs(prefix) if s.form() != "current"]
        if not specs:
            click.echo("Every SSH kernelspec here is in today's form: nothing to upgrade.")
        failed: List[SSHKernelError] = []
        for spec in specs:
            try:
                done = upgrade_spec(spec, dry_run=dry_run)
            except SSHKernelError as e:
                if name:
                    raise
                click.echo(f"ssh_ipykernel: error: {e}", err=True)  # --all: the others still get upgraded
                failed.append(e)
                continue
            if not done.needed:
                click.echo(f"{done.name} is in today's form already: nothing to do.")
                continue
            verb = "Would upgrade" if dry_run else "Upgraded"
            click.echo(f"{verb} {done.name} ({done.form} form) in {done.directory}")
            click.echo(f"  old argv: {shlex.join(done.old_argv)}")
            click.echo(f"  new argv: {shlex.join(done.new_argv)}")
        if dry_run and specs:
            click.echo("Nothing written (--dry-run).")
        return failed[0].exit_code if failed else 0

    report_errors(run)


def _shown_env(spec: Any) -> Optional[str]:
    """The remote kernel's variables, one NAME=VALUE a line, as the proxy reads them (1.x's
    "A=1 B=2" as two); the arguments as written if they cannot be read."""
    from .exceptions import SSHKernelError

    try:
        env = spec.proxy_options().env
    except SSHKernelError:
        return "\n".join(spec.options.get("env") or ()) or None
    return "\n".join(f"{name}={value}" for name, value in env.items()) or None


@manage.command(name="remove", context_settings=CONTEXT)
@click.argument("name")
@click.option("--prefix", metavar="DIR", type=click.Path(file_okay=False), help=PREFIX_HELP)
def remove_command(name: str, prefix: Optional[str]) -> None:
    """Remove the SSH kernelspec NAME (only SSH kernelspecs; running kernels are not touched)."""
    from .specs import get_spec, remove_spec

    def run() -> int:
        spec = get_spec(name, prefix)
        path = remove_spec(spec.name, prefix)
        click.echo(f"Removed kernelspec {spec.name} ({spec.display_name}) from {path}")
        return 0

    report_errors(run)


# -- check ----------------------------------------------------------------------------------------


@manage.command(name="check", cls=EnvWordsCommand, context_settings=CONTEXT)
@click.argument("name", required=False)
@common_options
@transport_option
@launch_options
@click.option("--prefix", metavar="DIR", type=click.Path(file_okay=False), help=PREFIX_HELP)
def check_command(name: Optional[str], prefix: Optional[str], **params: Any) -> None:
    """Check that a kernel works, step by step, with timings: the kernelspec NAME, or --host
    HOST with the options `add` would take.

    Steps: resolve, connect, authenticate, remote python, packages (ipykernel, jupyter_client),
    connection file (written and removed), kernel command, kernel start (through the proxy, as
    Jupyter starts it), execute, shutdown. Exit code 0 if all passed, else the exit code the
    kernel itself would fail with (see the README's error table).
    """
    from .check import Checker
    from .exceptions import UsageError

    def run() -> int:
        if name and params["host"]:
            raise UsageError("check takes a kernelspec NAME or --host HOST with options, not both")
        target = _target_from_spec(name, prefix, _given_timeout(params)) if name else None
        if target is None:
            if not params["host"]:
                raise UsageError("check needs a kernelspec NAME (see `list`) or --host HOST")
            target = _target_from_options(params)
        what = f"kernelspec {name}" if name else "a kernel"
        click.echo(f"Checking {what} on {target.host}")
        checker = Checker(target, on_step=print_step)
        checker.run()
        return checker.failed.error.exit_code if print_summary(checker, target.host) else 0  # type: ignore[union-attr]

    report_errors(run)


# Neither form requires --host: check NAME takes it from the kernelspec.
for _param in check_command.params:
    if _param.name == "host":
        _param.required = False


def _given_timeout(params: Dict[str, Any]) -> Optional[float]:
    """check's --timeout if the user gave it (not its default)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source("timeout")
    return params["timeout"] if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) else None


def _target_from_spec(name: str, prefix: Optional[str], timeout: Optional[float] = None) -> "Target":
    """check NAME: the installed kernelspec, and the options its argv gives the proxy; check's
    own waits use ``timeout`` if given (check NAME --timeout 60), else the kernelspec's. The
    kernel start step starts the kernelspec as Jupyter would, with its own --timeout."""
    import dataclasses

    from .check import Target
    from .specs import get_spec

    spec = get_spec(name, prefix)
    options = spec.proxy_options()
    if timeout is not None:
        options = dataclasses.replace(options, connection=dataclasses.replace(options.connection, timeout=timeout))
    return Target(options, kernelspec=spec.spec, resource_dir=spec.resource_dir)


def _target_from_options(params: Dict[str, Any]) -> "Target":
    """check --host: the options `add` would take, in a kernelspec of their own."""
    from .check import Target
    from .kernelspec import KernelSpecOptions, build_kernelspec
    from .options import ProxyOptions

    proxy = ProxyOptions.from_params(params)
    for note in proxy.env_notes:
        click.echo(f"Note: {note}")
    return Target(proxy, kernelspec=build_kernelspec(KernelSpecOptions(proxy=proxy)))


MARKS = {True: "ok", False: "FAIL", None: "--"}


def print_step(step: Any) -> None:
    """One line per step as it finishes; a failed step's full message (with advice) below it."""
    import textwrap

    seconds = f"{step.seconds:6.2f} s" if step.seconds is not None else " " * 8
    if step.ok is None and step.detail == "not run":
        return  # after a failure: print_summary names them on one line
    if step.ok is False:
        mark = "LOGIN" if isinstance(step.error, LoginRequiredError) else MARKS[step.ok]
        click.echo(f"  {mark:<4} {step.name:<15} {seconds}")
        for line in str(step.error).splitlines():
            click.echo(textwrap.fill(line, width=100, initial_indent=" " * 8, subsequent_indent=" " * 10,
                                     break_on_hyphens=False, break_long_words=False))
    else:
        click.echo(f"  {MARKS[step.ok]:<4} {step.name:<15} {seconds}  {step.detail}")


def print_summary(checker: Any, host: str) -> bool:
    """The last line of a check; True if a step failed."""
    failed = checker.failed
    total = sum(s.seconds or 0 for s in checker.steps)
    if failed is None:
        ran = len([s for s in checker.steps if s.ok])
        click.echo(f"All {ran} checks passed in {total:.1f} s: kernels on {host} work.")
        return False
    skipped = [s.name for s in checker.steps if s.ok is None and s.detail == "not run"]
    if skipped:
        click.echo(f"  --   not run: {', '.join(skipped)}")
    if isinstance(failed.error, LoginRequiredError):
        click.echo(f"{host}: needs an interactive login (exit code {failed.error.exit_code}): log in with "
                   f"ssh-ipykernel login, then check again.")
        return True
    click.echo(f"{host}: failed at \"{failed.name}\" (exit code {failed.error.exit_code}); see the message above.")
    return True


def main() -> None:
    manage(prog_name="python -m ssh_ipykernel.manage")


if __name__ == "__main__":
    main()
