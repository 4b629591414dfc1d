"""``python -m ssh_ipykernel``: the local proxy a kernelspec runs."""
from .proxycli import proxy_command

if __name__ == "__main__":
    proxy_command(prog_name="python -m ssh_ipykernel")
