"""``python -m ssh_ipykernel``: the local proxy a kernelspec runs; ``python -m ssh_ipykernel
login|logout HOST`` are the console script's commands (the proxy takes no positional argument,
so these words cannot be one of its command lines)."""
import sys

from .proxycli import proxy_command

#: Commands of ``ssh-ipykernel`` that ``python -m ssh_ipykernel`` also runs.
COMMANDS = ("login", "logout")

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        from .cli import main

        main(prog_name="python -m ssh_ipykernel")
    else:
        proxy_command(prog_name="python -m ssh_ipykernel")
