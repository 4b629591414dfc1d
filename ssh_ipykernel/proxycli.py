"""The proxy's command line: ``python -m ssh_ipykernel`` (``ssh-ipykernel kernel``), what a
kernelspec runs, and the click options ``manage add`` and ``check`` share with it.

A kernelspec replays ``add``'s options to the proxy, so both declare them here, once, with the
same names, help and defaults (from options.py); :class:`~.options.ProxyOptions` is what they
parse into. specs.py reads an installed kernelspec back through :func:`parse_proxy_argv`, i.e.
with this very command.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, List, Optional, TypeVar, cast

import click

from . import __version__
from .exceptions import SSHKernelError, UsageError
from .options import (
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_GRACE_TEXT,
    DEFAULT_LOGIN_WAIT_TEXT,
    DEFAULT_OUTPUT_BUFFER_TEXT,
    DEFAULT_PERSIST,
    DEFAULT_TIMEOUT,
    DEFAULT_TRANSPORT,
    DEFAULT_WARM_TEXT,
    ProxyParams,
    expand_env_words,
)
from .report import report_errors
from .transport import CHOICES

F = TypeVar("F", bound=Callable[..., object])
HOST_HELP = "Where the kernel runs: an ~/.ssh/config alias, user@host, host:port or ssh://user@host:port."
SSH_CONFIG_HELP = "ssh config file to use instead of ~/.ssh/config (ssh -F)."


def _apply(func: F, decorators: List[Callable[[F], F]]) -> F:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def grace_option(func: F) -> F:
    """``--grace``, shared by the proxy and manage (which records it in the kernelspec)."""
    return click.option(
        "--grace", default=DEFAULT_GRACE_TEXT, show_default=True, metavar="DURATION",
        help="How long the remote kernel outlives a lost connection (network down, laptop asleep, "
             "proxy killed) waiting for the proxy to come back: seconds or 30m, 2h, 1d; 'never' "
             "keeps it until a proxy shuts it down. 0 ends it as soon as the connection is lost.",
    )(func)


def persist_option(func: F) -> F:
    """``--persist``, shared by the proxy and manage (which records it in the kernelspec)."""
    return click.option(
        "--persist", type=click.FloatRange(min=1), default=DEFAULT_PERSIST, show_default=True, metavar="SECONDS",
        help="How long the SSH connection to HOST, shared by its kernels, stays open after the "
             "last one ended (a restart or the next kernel then needs no new login).",
    )(func)


def login_wait_option(func: F) -> F:
    """``--login-wait``, shared by the proxy and manage (which records it in the kernelspec)."""
    return click.option(
        "--login-wait", default=DEFAULT_LOGIN_WAIT_TEXT, show_default=True, metavar="DURATION",
        help="On a host that needs a person to log in (password, one-time code, passphrase): how long a "
             "kernel waits for `ssh-ipykernel login HOST` before it fails: seconds or 10m, 1h; 0 fails at once.",
    )(func)


def output_buffer_option(func: F) -> F:
    """``--output-buffer``, shared by the proxy and manage (which records it in the kernelspec)."""
    return click.option(
        "--output-buffer", default=DEFAULT_OUTPUT_BUFFER_TEXT, show_default=True, metavar="SIZE",
        help="How much of the kernel's output (and of what clients send it) is kept while the network is "
             "down, to be delivered once it is back: 512k, 64M, 1G. Past it, the oldest output is dropped, "
             "with a notice in the notebook and the log.",
    )(func)


def warm_option(func: F) -> F:
    """``--warm``, shared by the proxy and manage (which records it in the kernelspec)."""
    return click.option(
        "--warm", default=DEFAULT_WARM_TEXT, show_default=True, metavar="DURATION|off",
        help="Keep a warm pool on HOST (a python with ipykernel imported, per python, environment and "
             "working directory), so that a restart or the next kernel starts in about one round trip; "
             "it ends this long after the host's last kernel: seconds or 10m, 1h. 'off': every kernel "
             "starts cold. Only the default ipykernel kernel starts warm.",
    )(func)


def transport_option(func: F) -> F:
    """``--transport``, shared by the proxy, manage and connect."""
    return click.option(
        "--transport", type=click.Choice(list(CHOICES)), default=DEFAULT_TRANSPORT, show_default=True,
        help="How to talk SSH: openssh (the ssh client; one shared connection per host), paramiko "
             "(pure Python, for machines without an ssh client), or auto (openssh if ssh is on PATH).",
    )(func)


class EnvWordsCommand(click.Command):
    """A command that also takes ssh_ipykernel 1.x's ``--env A=1 B=2`` (several words after one
    --env): options.expand_env_words turns them into one --env each before click parses."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        takes_value = [name for param in self.params if isinstance(param, click.Option) and not param.is_flag
                       and param.nargs == 1 for name in (*param.opts, *param.secondary_opts)]
        return super().parse_args(ctx, expand_env_words(list(args), takes_value))


ENV_HELP = ("Environment variable for the remote kernel, NAME=VALUE, the value kept exactly (repeatable). "
            "A value with spaces that splits into NAME=VALUE words ('A=1 B=2', as ssh_ipykernel 1.x wrote) "
            "is read as those words: see the README.")


def common_options(func: F) -> F:
    """The options both the proxy and manage take, with the same names and help (the short
    forms are ssh_ipykernel 1.x's, which old kernelspecs and scripts use)."""
    return _apply(func, [
        click.option("-H", "--host", required=True, metavar="HOST", help=HOST_HELP),
        click.option("-p", "--python", metavar="PATH",
                     help="Remote interpreter path or environment prefix (PREFIX/bin/python). Default: python3 on the remote PATH."),
        click.option("--ssh-config", type=click.Path(dir_okay=False), metavar="FILE", help=SSH_CONFIG_HELP),
        click.option("-t", "--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
                     help="Seconds allowed to connect and to start the remote kernel."),
        click.option("-e", "--env", "env", multiple=True, metavar="VAR=VALUE", help=ENV_HELP),
        click.option("-s", "--sudo", is_flag=True, help="Run the remote kernel with sudo -n (passwordless sudo only)."),
    ])


def launch_options(func: F) -> F:
    """What runs on the remote and how (proxy, add and check take them)."""
    return _apply(func, [
        click.option("--remote-kernel", metavar="NAME",
                     help="Start this kernelspec installed on the remote (any language: see "
                          "`jupyter kernelspec list` there) instead of ipykernel. --python names "
                          "the Python (with jupyter_client) that finds and starts it."),
        click.option("--kernel-cmd", metavar="'CMD ARGS'",
                     help="Start this command on the remote instead of ipykernel, with "
                          "{connection_file} where the kernel takes its connection file. Split "
                          "like a shell would, but never run through one."),
        click.option("--workdir", metavar="DIR",
                     help="The kernel's working directory on the remote (~ is the remote home). "
                          "Default: the remote home."),
        click.option("--slurm", metavar="'SBATCH OPTIONS'",
                     help="Run the kernel in a SLURM job on a compute node, HOST being the login node: these "
                          "sbatch options ('--partition gpu --time 2:00:00 --gres gpu:1'), split like a shell "
                          "would but never run through one. --python, --pre-command, --env, --workdir apply "
                          "on the node."),
        click.option("--queue-timeout", metavar="DURATION",
                     help="With --slurm: how long the job may wait in the queue before the start fails "
                          "(seconds or 30m, 2h). Default: 1h."),
        click.option("--pre-command", metavar="'CMD'",
                     help="One command line your remote login shell runs first, to prepare the "
                          "environment, e.g. 'source /opt/conda/bin/activate py311' or 'module "
                          "load python/3.11'. Kept exactly; the kernel does not start if it fails."),
    ])


def log_options(func: F) -> F:
    """``--log-level`` and ``--log-file`` (the proxy and connect)."""
    return _apply(func, [
        click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
                     default="INFO", show_default=True, help="Detail of the progress lines on stderr."),
        click.option("--log-file", type=click.Path(dir_okay=False), help="Also write the log to this file."),
    ])


@click.command(name="kernel", cls=EnvWordsCommand, context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@grace_option
@launch_options
@click.option("-f", "--connection-file", "--file", "connection_file", required=True, metavar="FILE",
              help="The connection file Jupyter wrote ({connection_file} in a kernelspec).")
@transport_option
@log_options
@click.option("--client-timeout", type=click.FloatRange(min=1), default=DEFAULT_CLIENT_TIMEOUT, hidden=True,
              help="Seconds of silence after which the remote keeper counts a proxy as gone.")
@persist_option
@login_wait_option
@output_buffer_option
@warm_option
@click.version_option(__version__, prog_name="ssh_ipykernel")
def proxy_command(log_level: str, log_file: Optional[str], **params: Any) -> None:
    """Start a kernel on HOST over SSH and forward it to the ports in the connection file.

    Jupyter runs this from a kernelspec written by `python -m ssh_ipykernel.manage`; it can also
    be run by hand. It lives as long as the remote kernel and reconnects when the network drops:
    SIGINT interrupts the kernel, SIGTERM and SIGHUP shut it down, SIGQUIT detaches (the kernel
    keeps running for the grace period).
    """
    from .log import setup_logging

    setup_logging(log_level, log_file)

    def run() -> int:
        from .options import ProxyOptions
        from .proxy import Proxy
        from .transport import resolved

        options = ProxyOptions.from_params(params)
        proxy = Proxy(dataclasses.replace(options, connection=resolved(options.connection)))
        for note in options.env_notes:  # how an --env of 1.x's form was read: never silently
            proxy.log.info("%s", note)
        try:
            return proxy.run()
        except SSHKernelError as e:
            # Through the logger, so that it carries host and kernel id and lands in --log-file.
            proxy.log.error("%s", e)
            sys.exit(e.exit_code)

    def run_recorded() -> int:
        """``run``, and an error before the proxy runs (which records its own) kept as data."""
        from .proxy import record_early_error

        try:
            return run()
        except SSHKernelError as e:
            record_early_error(params["connection_file"], params["host"], e)
            raise

    report_errors(run_recorded)


def parse_proxy_argv(argv: List[str]) -> ProxyParams:
    """The values a kernelspec's argv (``<python> -m ssh_ipykernel ...``) gives the proxy, parsed
    by the proxy's own command (nothing runs); UsageError if it would not accept them."""
    try:
        ctx = proxy_command.make_context("ssh_ipykernel", list(argv[3:]))
    except click.ClickException as e:
        raise UsageError(f"its argv is not a valid ssh_ipykernel command line: {e.format_message()}") from None
    return cast(ProxyParams, dict(ctx.params))
