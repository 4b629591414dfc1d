"""ssh_ipykernel: run a Jupyter kernel on another machine over SSH, as if it were local."""

__version__ = "2.0.0.dev0"
