"""Command-line entry points. Only this layer prints errors and picks exit codes.

* ``python -m ssh_ipykernel ...``           -> :func:`proxy_command` (what kernelspecs run)
* ``python -m ssh_ipykernel.manage ...``    -> ssh_ipykernel.manage (writes kernelspecs)
* ``ssh-ipykernel kernel|add ...``          -> :func:`main`, grouping both
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence, Tuple

import click

from . import __version__
from .exceptions import SSHKernelError
from .options import (
    check_common, check_launch, common_options, grace_option, launch_options, persist_option, transport_option,
)


def report_errors(func: Callable[[], int]) -> None:
    """Run ``func``; print an SSHKernelError as one readable message and exit with its code."""
    try:
        code = func()
    except SSHKernelError as e:
        click.echo(f"ssh_ipykernel: error: {e}", err=True)
        sys.exit(e.exit_code)
    sys.exit(code or 0)


@click.command(name="kernel", context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@grace_option
@launch_options
@click.option("-f", "--connection-file", "connection_file", required=True, metavar="FILE",
              help="The connection file Jupyter wrote ({connection_file} in a kernelspec).")
@transport_option
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True, help="Detail of the progress lines on stderr.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Also write the log to this file.")
@click.option("--client-timeout", type=click.FloatRange(min=1), default=30.0, hidden=True,
              help="Seconds of silence after which the remote keeper counts a proxy as gone.")
@persist_option
@click.version_option(__version__, prog_name="ssh_ipykernel")
def proxy_command(
    host: str,
    python: Optional[str],
    ssh_config: Optional[str],
    timeout: float,
    env: Tuple[str, ...],
    sudo: bool,
    grace: str,
    remote_kernel: Optional[str],
    kernel_cmd: Optional[str],
    workdir: Optional[str],
    pre_command: Optional[str],
    connection_file: str,
    transport: str,
    log_level: str,
    log_file: Optional[str],
    client_timeout: float,
    persist: float,
) -> None:
    """Start a kernel on HOST over SSH and forward it to the ports in the connection file.

    Jupyter runs this from a kernelspec written by `python -m ssh_ipykernel.manage`; it can also
    be run by hand. It lives as long as the remote kernel and reconnects when the network drops:
    SIGINT interrupts the kernel, SIGTERM and SIGHUP shut it down, SIGQUIT detaches (the kernel
    keeps running for the grace period).
    """
    from .log import setup_logging

    setup_logging(log_level, log_file)

    def run() -> int:
        from .options import parse_grace
        from .proxy import Proxy, ProxyOptions
        from .transport import resolve_kind

        env_dict, ssh_config_path = check_common(host, python, env, ssh_config)
        launch = check_launch(remote_kernel, kernel_cmd, workdir, pre_command, connection_file=connection_file)
        options = ProxyOptions(
            host=host, connection_file=connection_file, python=python, ssh_config=ssh_config_path,
            timeout=timeout, env=env_dict, sudo=sudo, transport=resolve_kind(transport),
            grace=parse_grace(grace), client_timeout=client_timeout, persist=persist, launch=launch,
        )
        proxy = Proxy(options)
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
            record_early_error(connection_file, host, e)
            raise

    report_errors(run_recorded)


@click.command(name="connect", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", required=True, metavar="HOST",
              help="Where the kernel runs: an ~/.ssh/config alias, user@host, host:port or ssh://user@host:port.")
@click.argument("remote_file", metavar="REMOTE_CONNECTION_FILE")
@click.option("--local-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Where to write the local connection file (default: in Jupyter's runtime dir).")
@click.option("--python", metavar="PATH",
              help="Remote python used to read the connection file (any Python >= 3.8). Default: python3.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), metavar="FILE",
              help="ssh config file to use instead of ~/.ssh/config (ssh -F).")
@click.option("--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds allowed to connect.")
@transport_option
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True, help="Detail of the progress lines on stderr.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Also write the log to this file.")
def connect_command(host: str, remote_file: str, local_file: Optional[str], python: Optional[str],
                    ssh_config: Optional[str], timeout: float, transport: str, log_level: str,
                    log_file: Optional[str]) -> None:
    """Forward a kernel already running on HOST (its REMOTE_CONNECTION_FILE) to local ports.

    Writes a local connection file for `jupyter console --existing FILE` (or any Jupyter client)
    and keeps the tunnels up, reconnecting through network loss, until stopped with Ctrl-C.
    Stopping only disconnects: the kernel keeps running.
    """
    from .log import setup_logging

    setup_logging(log_level, log_file)

    def run() -> int:
        from .connect import ConnectOptions, Connector
        from .transport import resolve_kind

        _, ssh_config_path = check_common(host, python, (), ssh_config)
        connector = Connector(ConnectOptions(host=host, remote_file=remote_file, local_file=local_file,
                                             python=python, ssh_config=ssh_config_path, timeout=timeout,
                                             transport=resolve_kind(transport)))

        def ready(path: str, kernel: object) -> None:
            click.echo(f"Connected. Local connection file: {path}")
            click.echo(f"Use it with: jupyter console --existing {path}")

        return connector.run(on_ready=ready)

    report_errors(run)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, the last one unpadded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@click.command(name="status", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every field of the proxies' state files).")
def status_command(as_json: bool) -> None:
    """List the SSH kernels running from this machine: host, kernel id, remote pid, uptime,
    tunnel state, reconnect count and the local proxy's pid."""
    import json

    from .status import running_kernels, table_rows

    def run() -> int:
        kernels = running_kernels()
        if as_json:
            click.echo(json.dumps(kernels, indent=1))
        elif not kernels:
            click.echo("No SSH kernels are running from this machine.")
        else:
            headers = ["HOST", "KERNEL ID", "REMOTE PID", "UPTIME", "TUNNEL", "RECONNECTS", "PROXY PID"]
            click.echo(format_table(headers, table_rows(kernels)))
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ssh-ipykernel")
def main() -> None:
    """Run Jupyter kernels on remote hosts over SSH.

    `add` registers a host as a kernel (same as `python -m ssh_ipykernel.manage`), `list`,
    `show`, `check` and `remove` manage those kernelspecs, `status` shows the running kernels,
    `connect` forwards a kernel already running on a host, `disconnect` ends the SSH connection
    the kernels of a host share, and `kernel` is the proxy a kernelspec runs
    (`python -m ssh_ipykernel`).
    """


def _register() -> None:
    from .manage import add_command, check_command, list_command, remove_command, show_command

    main.add_command(proxy_command, "kernel")
    for name, command in (("add", add_command), ("list", list_command), ("show", show_command),
                          ("check", check_command), ("remove", remove_command), ("status", status_command),
                          ("connect", connect_command), ("disconnect", disconnect_command)):
        main.add_command(command, name)


_register()
