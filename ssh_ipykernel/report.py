"""What the commands print: an error as one message and its exit code, and tables.

The one place (with the click commands that call it) that prints errors and picks exit codes;
every command module (cli.py, proxycli.py, manage.py) uses it, and it imports none of them.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

import click

from .exceptions import SSHKernelError


def report_errors(func: Callable[[], int]) -> None:
    """Run ``func``; print an SSHKernelError as one readable message and exit with its code."""
    try:
        code = func()
    except SSHKernelError as e:
        click.echo(f"ssh_ipykernel: error: {e}", err=True)
        sys.exit(e.exit_code)
    sys.exit(code or 0)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, the last one unpadded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
