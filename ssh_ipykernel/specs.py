"""The SSH kernelspecs installed on this machine: find, describe, upgrade and remove them.

An SSH kernelspec is one whose argv runs ``<python> -m ssh_ipykernel ...``. What it does is
read back from that argv with the proxy's own option parser, so what ``list`` and ``show``
print is exactly what Jupyter will run. Search and removal go through jupyter_client's
KernelSpecManager, so they see the same kernelspecs every Jupyter front end sees.

A kernelspec's *form* says whether its argv is the one ``manage add`` writes today for the same
options (``current``), one written by ssh_ipykernel 1.x (``1.x``: no ``metadata.ssh_ipykernel``,
or 1.x's spellings such as ``-s`` or ``--env "A=1 B=2"``), or another older or hand-made spelling
(``older``). Both of the latter run as they are; :func:`upgrade_spec` rewrites them in place.
"""
from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .exceptions import KernelSpecNotFoundError, SSHKernelError, UsageError
from .kernelspec import check_kernel_name, ssh_metadata
from .options import ProxyOptions, ProxyParams, read_env_item
from .proxycli import parse_proxy_argv

#: Forms of an SSH kernelspec's argv (InstalledSpec.form).
CURRENT, V1, OLDER, UNREADABLE = "current", "1.x", "older", "unreadable"
#: Spellings only ssh_ipykernel 1.x wrote (today's manage writes the long forms).
_V1_SPELLINGS = frozenset({"-H", "-p", "-t", "-e", "-s", "--file"})


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

    def current_argv(self) -> Optional[List[str]]:
        """The argv ``manage add`` writes today for this kernelspec's options (same local python);
        None if its argv cannot be read."""
        try:
            return self.proxy_options().argv(str(self.spec["argv"][0]))
        except SSHKernelError:
            return None

    def form(self) -> str:
        """CURRENT, V1 (written by ssh_ipykernel 1.x), OLDER (another spelling) or UNREADABLE."""
        argv = [str(a) for a in self.spec.get("argv", [])]
        current = self.current_argv()
        if current is None:
            return UNREADABLE
        if argv == current:
            return CURRENT
        if "ssh_ipykernel" not in (self.spec.get("metadata") or {}) or _V1_SPELLINGS.intersection(argv):
            return V1
        if any(read_env_item(str(e)).as_words for e in self.options.get("env") or ()):
            return V1
        return OLDER

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "display_name": self.display_name, "host": self.host,
                "language": self.spec.get("language"), "remote": self.remote(), "form": self.form(),
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


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade_spec` did (or, with dry_run, would do) to one kernelspec."""

    name: str
    directory: str
    form: str  # the form it had: CURRENT means there was nothing to do
    old_argv: List[str]
    new_argv: List[str]
    written: bool

    @property
    def needed(self) -> bool:
        return self.form != CURRENT


def upgrade_spec(spec: InstalledSpec, *, dry_run: bool = False) -> Upgrade:
    """Rewrite ``spec``'s kernel.json in place with today's argv for the same options (display
    name, host, python, env, sudo, timeout, ...); every other key of kernel.json and every other
    file in its directory (logos) stay. A kernelspec already in today's form is left as it is.
    UsageError if its argv cannot be read, or the directory cannot be written."""
    old = [str(a) for a in spec.spec.get("argv", [])]
    form = spec.form()
    if form == CURRENT:
        return Upgrade(spec.name, spec.resource_dir, form, old, old, written=False)
    if form == UNREADABLE:
        try:
            spec.proxy_options()
        except SSHKernelError as e:
            msg = (f"cannot upgrade kernelspec {spec.name}: {e}. Add it again with `python -m "
                   f"ssh_ipykernel.manage add --name {spec.name} ...`, which replaces it")
            raise UsageError(msg) from e
    options = spec.proxy_options()
    new = options.argv(old[0])
    # The rewrite must say exactly what the old argv said (the proxy's own parse, both sides).
    if ProxyOptions.from_params(parse_proxy_argv(new), vet_ssh_config=False) != options:
        raise UsageError(f"kernelspec {spec.name}: its argv does not read back the same in today's form; left as it is")
    if not dry_run:
        _rewrite(spec, new, options)
    return Upgrade(spec.name, spec.resource_dir, form, old, new, written=not dry_run)


def _rewrite(spec: InstalledSpec, argv: List[str], options: ProxyOptions) -> None:
    """kernel.json as the file holds it (not jupyter_client's view with its defaults added), with
    the new argv and metadata.ssh_ipykernel; replaced atomically, its mode kept."""
    path = os.path.join(spec.resource_dir, "kernel.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data["argv"] = argv
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        data["metadata"] = {**metadata, "ssh_ipykernel": ssh_metadata(options)}
        fd, tmp = tempfile.mkstemp(prefix=".kernel.json.", dir=spec.resource_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except PermissionError as e:
        msg = (f"cannot upgrade kernelspec {spec.name}: permission denied writing {spec.resource_dir} "
               f"({e.filename}); run the upgrade as the user who owns it (for a system-wide "
               f"kernelspec, as root)")
        raise UsageError(msg) from e
