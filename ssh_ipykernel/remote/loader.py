"""The head of every program shipped to the remote: makes the shipped sources real modules.

session/bundle.py sends this module's source followed by one call of ``run`` with the other
modules' sources. They become modules of one package (``ssh_ipykernel_remote``, a name no
installed package has) through the import system, each from its own source and file name: they
import each other exactly as they do locally (``from .protocol import Event``), and a traceback
names ``ssh_ipykernel/remote/keeper.py`` and the line (``traceback`` also shows its text, through
``get_source``). The modules are made when first imported, so a session loads only what it uses.

Runs on the remote: standard library only, Python >= 3.8 (the one-line loader before it has
refused older ones).
"""
import sys
from importlib.machinery import ModuleSpec

PACKAGE = "ssh_ipykernel_remote"
#: How a shipped module's file is named on the remote (in tracebacks).
FILENAME = "ssh_ipykernel/remote/%s.py"


class ShippedModules:
    """A meta path finder and loader for the shipped sources (``name -> (filename, source)``)."""

    def __init__(self, package: str, sources: dict) -> None:
        self.package = package
        self.sources = sources

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - the finder protocol
        if fullname == self.package:
            return ModuleSpec(fullname, self, is_package=True)
        package, _, name = fullname.rpartition(".")
        if package == self.package and name in self.sources:
            return ModuleSpec(fullname, self, origin=self.sources[name][0])
        return None

    def create_module(self, spec):  # noqa: ANN001, ANN201 - the loader protocol: default module
        return None

    def exec_module(self, module) -> None:  # noqa: ANN001
        if module.__name__ == self.package:
            return  # the package itself is empty
        filename, source = self.sources[module.__name__.rpartition(".")[2]]
        module.__file__ = filename
        # dont_inherit: each module's own __future__ imports, not this program's.
        exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)  # noqa: S102 (the shipped module itself)

    def get_source(self, fullname: str) -> "str | None":
        """For linecache: the text of a shipped module's lines in a traceback."""
        entry = self.sources.get(fullname.rpartition(".")[2]) if fullname.startswith(self.package + ".") else None
        return entry[1] if entry else None


def install(sources: dict, package: str = PACKAGE) -> ShippedModules:
    """Make ``sources`` importable as ``package.<name>`` (first on the meta path: no search
    of sys.path for a name that is ours)."""
    finder = ShippedModules(package, sources)
    sys.meta_path.insert(0, finder)
    return finder


def run(sources: dict, main: str, package: str = PACKAGE) -> None:
    """Import ``package.main`` from ``sources`` and call its ``main()``."""
    install(sources, package)
    __import__(package + "." + main)
    sys.modules[package + "." + main].main()


def program(head: str, sources: dict, main: str) -> str:
    """A shipped program's text: ``head`` (this module's source), then ``run`` of ``main`` with
    ``sources`` (``name -> (filename, source)``). Made locally for an agent's session
    (session/bundle.py) and on the remote for a warm pool (warm.py)."""
    table = "".join("    %r: (%r, %r),\n" % (name, filename, source) for name, (filename, source) in sources.items())
    return "%s\n\nrun({\n%s}, %r)\n" % (head, table, main)
