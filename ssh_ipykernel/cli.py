"""The ``ssh-ipykernel`` console script: one group over every command, plus connect, status and
disconnect. Only the command layer (this, proxycli.py, manage.py, with report.py) prints errors
and picks exit codes.

* ``python -m ssh_ipykernel ...``           -> proxycli.proxy_command (what kernelspecs run)
* ``python -m ssh_ipykernel.manage ...``    -> ssh_ipykernel.manage (writes kernelspecs)
* ``ssh-ipykernel kernel|add ...``          -> :func:`main`, grouping both
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import click

from . import __version__
from .manage import add_command, check_command, list_command, remove_command, show_command, upgrade_command
from .options import DEFAULT_LOGIN_PERSIST_TEXT, DEFAULT_TIMEOUT
from .proxycli import HOST_HELP, SSH_CONFIG_HELP, log_options, proxy_command, transport_option
from .report import format_table, report_errors

__all__ = ["main", "proxy_command", "connect_command", "status_command", "disconnect_command", "login_command",
           "logout_command"]


@click.command(name="connect", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", required=True, metavar="HOST", help=HOST_HELP)
@click.argument("remote_file", metavar="REMOTE_CONNECTION_FILE")
@click.option("--local-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Where to write the local connection file (default: in Jupyter's runtime dir).")
@click.option("--python", metavar="PATH",
              help="Remote python used to read the connection file (any Python >= 3.8). Default: python3.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), metavar="FILE", help=SSH_CONFIG_HELP)
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds allowed to connect.")
@transport_option
@log_options
def connect_command(log_level: str, log_file: Optional[str], **params: Any) -> None:
    """Forward a kernel already running on HOST (its REMOTE_CONNECTION_FILE) to local ports.

    Writes a local connection file for `jupyter console --existing FILE` (or any Jupyter client)
    and keeps the tunnels up, reconnecting through network loss, until stopped with Ctrl-C.
    Stopping only disconnects: the kernel keeps running.
    """
    from .log import setup_logging

    setup_logging(log_level, log_file)

    def run() -> int:
        from .connect import Connector
        from .options import ConnectOptions
        from .transport import resolved

        options = ConnectOptions.from_params(params)
        connector = Connector(dataclasses.replace(options, connection=resolved(options.connection)))

        def ready(path: str, kernel: object) -> None:
            click.echo(f"Connected. Local connection file: {path}")
            click.echo(f"Use it with: jupyter console --existing {path}")

        return connector.run(on_ready=ready)

    report_errors(run)


@click.command(name="status", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"kernels": [every field of the proxies\' state files], "logins": [...], '
                   '"warm_pools": [...]}.')
def status_command(as_json: bool) -> None:
    """List the SSH kernels running from this machine: host, kernel id, remote pid, uptime,
    tunnel state, reconnect count and the local proxy's pid; the warm pools on their hosts
    (asked over the SSH connections that are up, never with a new login): pid, python, memory,
    kernels, when they end; then the hosts logged in with `ssh-ipykernel login` and since when."""
    import json

    from .status import login_rows, logins, pool_rows, running_kernels, table_rows, unasked_lines, warm_pools

    def run() -> int:
        kernels = running_kernels()
        pools = warm_pools()
        records = logins()
        if as_json:
            click.echo(json.dumps({"kernels": kernels, "logins": [dataclasses.asdict(r) for r in records],
                                   "warm_pools": pools}, indent=1))
            return 0
        if not kernels:
            click.echo("No SSH kernels are running from this machine.")
        else:
            headers = ["HOST", "KERNEL ID", "REMOTE PID", "UPTIME", "TUNNEL", "RECONNECTS", "PROXY PID"]
            click.echo(format_table(headers, table_rows(kernels)))
        if pools:
            click.echo("\nWarm pools (ipykernel imported, ready to fork the next kernel):")
            rows = pool_rows(pools)
            if rows:
                click.echo(format_table(["HOST", "POOL PID", "PYTHON", "RSS", "KERNELS", "ENDS"], rows))
            for line in unasked_lines(pools):
                click.echo(line)
        if records:
            click.echo("\nLogged in (ssh-ipykernel login):")
            click.echo(format_table(["HOST", "SINCE", "SSH PID", "STAYS OPEN"], login_rows(records)))
        return 0

    report_errors(run)


@click.command(name="disconnect", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", metavar="HOST", help="Only the connection to HOST (as written in the kernelspec). Default: all.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), metavar="FILE",
              help="The ssh config file the kernels of HOST use (ssh -F), if not ~/.ssh/config.")
def disconnect_command(host: Optional[str], ssh_config: Optional[str]) -> None:
    """End the SSH connections shared by the kernels of a host (or of all hosts) now, instead of
    --persist seconds after their last kernel. Running kernels keep running: their proxies
    reconnect over a new connection (after a change to the ssh config, say)."""
    from .hosts import parse_host
    from .options import check_ssh_config
    from .transport.openssh import end_shared_connections

    def run() -> int:
        spec = parse_host(host) if host else None
        ended = end_shared_connections(host=spec, ssh_config=check_ssh_config(ssh_config))
        if not ended:
            click.echo(f"No shared SSH connection {f'to {host}' if host else 'to any host'} is open.")
        for pid in ended:
            which = f"the shared SSH connection to {host}" if host else "a shared SSH connection"
            click.echo(f"Ended {which} (ssh master pid {pid}); its kernels reconnect by themselves.")
        return 0

    report_errors(run)


@click.command(name="login", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("host", metavar="HOST")
@click.option("--ssh-config", type=click.Path(dir_okay=False), metavar="FILE",
              help="The ssh config file the kernels of HOST use (ssh -F), if not ~/.ssh/config.")
@click.option("--persist", default=DEFAULT_LOGIN_PERSIST_TEXT, show_default=True, metavar="DURATION",
              help="How long the connection stays open after the last kernel of HOST ended (it stays while "
                   "kernels use it): 8h, 30m, 3600, or 'never' (until `ssh-ipykernel logout HOST`).")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds allowed to reach HOST (ssh ConnectTimeout); typing has no limit.")
def login_command(host: str, ssh_config: Optional[str], persist: str, timeout: float) -> None:
    """Log in to HOST once, in this terminal, for the kernels of HOST to share.

    For hosts that need a person at every login: a password, a one-time code (2FA), a key
    passphrase without an agent. ssh asks its questions here (secrets are not echoed), then the
    connection stays open in the background: kernels of HOST started before or after use it
    without asking anything. Host keys are never accepted for you: connect once with ssh first.
    """
    from .hosts import parse_host
    from .options import check_ssh_config, format_duration, parse_login_persist

    def run() -> int:
        transport = _openssh_transport(parse_host(host), check_ssh_config(ssh_config), timeout, "login")
        seconds = parse_login_persist(persist)
        try:
            record, already = transport.login(seconds, on_output=lambda text: click.echo(text, err=True, nl=False))
        except KeyboardInterrupt:  # ssh got the Ctrl-C too, and run_login made sure it is gone
            click.echo(f"\nLogin to {host} cancelled; no connection was left open.", err=True)
            return 130
        since = time.strftime("%H:%M", time.localtime(record.started))
        if already:
            click.echo(f"Already logged in to {host} (since {since}, ssh pid {record.pid}); nothing to do. "
                       f"`ssh-ipykernel logout {host}` ends that connection.")
            return 0
        stays = ("until `ssh-ipykernel logout " + host + "`" if seconds is None
                 else f"while kernels use it and {format_duration(seconds)} after the last one ended")
        click.echo(f"Logged in to {host}. The connection stays open in the background (ssh pid {record.pid}) "
                   f"{stays}; kernels of {host} use it without asking. `ssh-ipykernel logout {host}` ends it.")
        return 0

    report_errors(run)


@click.command(name="logout", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("host", metavar="HOST")
@click.option("--ssh-config", type=click.Path(dir_okay=False), metavar="FILE",
              help="The ssh config file given to `login` (ssh -F), if not ~/.ssh/config.")
def logout_command(host: str, ssh_config: Optional[str]) -> None:
    """End the connection to HOST opened by `ssh-ipykernel login` (or by its kernels). Running
    kernels of HOST keep running on the remote; they wait for the next login."""
    from .hosts import parse_host
    from .options import check_ssh_config
    from .transport.openssh import end_shared_connections

    def run() -> int:
        ended = end_shared_connections(host=parse_host(host), ssh_config=check_ssh_config(ssh_config))
        if not ended:
            click.echo(f"Not logged in to {host}: no connection to it is open.")
        for pid in ended:
            click.echo(f"Logged out of {host} (ended ssh pid {pid}).")
        return 0

    report_errors(run)


def _openssh_transport(spec: Any, ssh_config: Optional[str], timeout: float, command: str) -> Any:
    """The OpenSSH transport of ``spec``, for ``command`` (login): paramiko cannot share a login."""
    from .exceptions import UsageError
    from .transport import resolve_kind
    from .transport.base import TransportOptions

    if resolve_kind("auto") != "openssh":
        msg = (f"`ssh-ipykernel {command}` needs the OpenSSH client (ssh), which is not on PATH: install it "
               f"(apt install openssh-client); the paramiko transport cannot share a login between kernels")
        raise UsageError(msg)
    from .transport.openssh import OpenSSHTransport

    return OpenSSHTransport(spec, TransportOptions(ssh_config=ssh_config, connect_timeout=timeout))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ssh-ipykernel")
def main() -> None:
    """Run Jupyter kernels on remote hosts over SSH.

    `add` registers a host as a kernel (same as `python -m ssh_ipykernel.manage`), `list`,
    `show`, `check` and `remove` manage those kernelspecs, `status` shows the running kernels,
    `connect` forwards a kernel already running on a host, `disconnect` ends the SSH connection
    the kernels of a host share, `login` opens it by hand for hosts that need a password or a
    one-time code (`logout` ends it), and `kernel` is the proxy a kernelspec runs
    (`python -m ssh_ipykernel`).
    """


def _register() -> None:
    main.add_command(proxy_command, "kernel")
    for name, command in (("add", add_command), ("list", list_command), ("show", show_command),
                          ("check", check_command), ("remove", remove_command), ("upgrade", upgrade_command),
                          ("status", status_command),
                          ("connect", connect_command), ("disconnect", disconnect_command),
                          ("login", login_command), ("logout", logout_command)):
        main.add_command(command, name)


_register()
