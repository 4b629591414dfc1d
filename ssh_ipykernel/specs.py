"""The SSH kernelspecs installed on this machine: find, describe and remove them.

An SSH kernelspec is one whose argv runs ``<python> -m ssh_ipykernel ...``. What it does is
read back from that argv with the proxy's own option parser, so what ``list`` and ``show``
print is exactly what Jupyter will run. Search and removal go through jupyter_client's
KernelSpecManager, so they see the same kernelspecs every Jupyter front end sees.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .exceptions import KernelSpecNotFoundError, UsageError
from .kernelspec import check_kernel_name
from .options import ProxyOptions, ProxyParams
from .proxycli import parse_proxy_argv


@dataclass
class InstalledSpec:
    """One installed SSH kernelspec."""

    name: str
    resource_dir: str
    spec: Dict[str, Any]  # kernel.json as installed
    options: ProxyParams  # the proxy options its argv holds, as click parses them ({} if it would not)

    @property
    def display_name(self) -> str:
        return str(self.spec.get("display_name", self.name))

    @property
    def host(self) -> str:
        return str(self.options.get("host") or "?")

    def remote(self) -> str:
        """What runs on the remote, in a few words."""
        python = self.options.get("python") or "python3"
        if self.options.get("remote_kernel"):
            return f"kernelspec {self.options['remote_kernel']} (found by {python})"
        if self.options.get("kernel_cmd"):
            return f"command {self.options['kernel_cmd']}"
        return f"ipykernel with {python}"

    def command_line(self) -> str:
        """The argv as one shell-quoted line (what Jupyter runs, before {connection_file})."""
        return shlex.join(str(a) for a in self.spec.get("argv", []))

    def proxy_options(self) -> ProxyOptions:
        """The typed options the proxy will run with (the same parse as the proxy's own);
        UsageError (or HostSpecError) if the argv holds none it would accept."""
        if not self.options:
            msg = f"the argv of kernelspec {self.name} cannot be read as ssh_ipykernel options: {self.command_line()}"
            raise UsageError(msg)
        # A missing --ssh-config file is left to check's resolve step, which reports what ssh says.
        return ProxyOptions.from_params(self.options, vet_ssh_config=False)

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "display_name": self.display_name, "host": self.host,
                "language": self.spec.get("language"), "remote": self.remote(),
                "location": self.resource_dir, "options": self.options, "kernel.json": self.spec}


def is_ssh_argv(argv: object) -> bool:
    return isinstance(argv, list) and len(argv) >= 3 and argv[1:3] == ["-m", "ssh_ipykernel"]


def spec_manager(prefix: Optional[str] = None):  # noqa: ANN201 - KernelSpecManager
    """jupyter_client's KernelSpecManager; with ``prefix``, PREFIX/share/jupyter/kernels first."""
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    if prefix:
        manager.kernel_dirs = [os.path.join(prefix, "share", "jupyter", "kernels"), *manager.kernel_dirs]
    return manager


def _load(name: str, resource_dir: str, manager) -> Optional[InstalledSpec]:  # noqa: ANN001
    try:
        spec = manager.get_kernel_spec(name).to_dict()
    except Exception:  # noqa: BLE001 - a broken kernel.json is not ours to describe
        return None
    if not is_ssh_argv(spec.get("argv")):
        return None
    try:
        options = parse_proxy_argv(spec["argv"])
    except UsageError:
        options = ProxyParams()
    return InstalledSpec(name=name, resource_dir=resource_dir, spec=spec, options=options)


def list_specs(prefix: Optional[str] = None) -> List[InstalledSpec]:
    """Every SSH kernelspec Jupyter sees (the first of each name, as Jupyter picks it), by name."""
    manager = spec_manager(prefix)
    found = []
    for name, resource_dir in sorted(manager.find_kernel_specs().items()):
        spec = _load(name, resource_dir, manager)
        if spec is not None:
            found.append(spec)
    return found


def get_spec(name: str, prefix: Optional[str] = None) -> InstalledSpec:
    """The SSH kernelspec ``name``; KernelSpecNotFoundError (with the ones that exist) if none."""
    name = check_kernel_name(name)
    manager = spec_manager(prefix)
    specs = manager.find_kernel_specs()
    if name not in specs:
        ours = [s.name for s in list_specs(prefix)]
        have = f"the SSH kernelspecs here are: {', '.join(ours)}" if ours else "there are no SSH kernelspecs here"
        where = f" (searched {prefix}/share/jupyter/kernels and Jupyter's path)" if prefix else ""
        msg = (
            f"no kernelspec named {name!r}{where}; {have}. `python -m ssh_ipykernel.manage list` "
            f"shows them, `python -m ssh_ipykernel.manage add --host HOST` adds one"
        )
        raise KernelSpecNotFoundError(msg)
    spec = _load(name, specs[name], manager)
    if spec is None:
        msg = (
            f"the kernelspec {name!r} in {specs[name]} is not an SSH kernelspec (its argv does not "
            f"run ssh_ipykernel); ssh_ipykernel leaves it alone: use `jupyter kernelspec` for it"
        )
        raise KernelSpecNotFoundError(msg)
    return spec


def remove_spec(name: str, prefix: Optional[str] = None) -> str:
    """Remove the SSH kernelspec ``name``; return the directory removed."""
    spec = get_spec(name, prefix)
    manager = spec_manager(prefix)
    try:
        return manager.remove_kernel_spec(spec.name)
    except PermissionError as e:
        msg = f"cannot remove {spec.resource_dir}: permission denied ({e.filename}); it belongs to another user or to the system"
        raise UsageError(msg) from e
