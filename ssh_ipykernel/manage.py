"""``python -m ssh_ipykernel.manage``: register an SSH host as a Jupyter kernel.

Writes a kernelspec whose argv starts the local proxy (``python -m ssh_ipykernel``) with the
options given here, and installs it with jupyter_client's KernelSpecManager.
"""
from __future__ import annotations

import sys
from typing import Optional, Tuple

import click

from .options import check_common, common_options, grace_option


@click.command(name="add", context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@grace_option
@click.option("--display-name", metavar="TEXT", help='Name shown in kernel pickers. Default: "SSH <host>".')
@click.option("--name", metavar="NAME", help="Kernelspec name. Default: ssh_<host>.")
@click.option("--user", "location", flag_value="user", default=True,
              help="Install for the current user (default).")
@click.option("--sys-prefix", "location", flag_value="sys-prefix",
              help="Install into this Python's prefix (e.g. the active virtualenv).")
@click.option("--prefix", metavar="DIR", type=click.Path(file_okay=False),
              help="Install under DIR/share/jupyter/kernels.")
def add_command(
    host: str,
    python: Optional[str],
    ssh_config: Optional[str],
    timeout: float,
    env: Tuple[str, ...],
    sudo: bool,
    grace: str,
    display_name: Optional[str],
    name: Optional[str],
    location: str,
    prefix: Optional[str],
) -> None:
    """Write and install a kernelspec that runs a kernel on HOST over SSH."""
    from .cli import report_errors
    from .kernelspec import (
        KernelSpecOptions,
        build_kernelspec,
        check_kernel_name,
        default_kernel_name,
        install_kernelspec,
    )
    from .options import DEFAULT_GRACE, DEFAULT_TIMEOUT, parse_grace

    def run() -> int:
        env_dict, ssh_config_path = check_common(host, python, env, ssh_config)
        parse_grace(grace)
        kernel_name = check_kernel_name(name) if name else default_kernel_name(host)
        options = KernelSpecOptions(
            host=host, python=python, display_name=display_name, name=kernel_name, env=env_dict,
            sudo=sudo, timeout=None if timeout == DEFAULT_TIMEOUT else timeout,
            ssh_config=ssh_config_path, grace=None if grace == DEFAULT_GRACE else grace.strip(),
        )
        spec = build_kernelspec(options)
        install_prefix = sys.prefix if location == "sys-prefix" else prefix
        path = install_kernelspec(spec, kernel_name, user=install_prefix is None, prefix=install_prefix)
        click.echo(f"Installed kernelspec {kernel_name} ({spec['display_name']}) in {path}")
        click.echo(f"Pick \"{spec['display_name']}\" in Jupyter, or try: jupyter console --kernel {kernel_name}")
        return 0

    report_errors(run)


def main() -> None:
    add_command(prog_name="python -m ssh_ipykernel.manage")


if __name__ == "__main__":
    main()
