"""The head of every program shipped to the remote: makes the shipped sources real modules.

session/bundle.py sends this module's source followed by one call of ``run`` with the other
modules' sources. They become modules of one package (``ssh_ipykernel_remote``, a name no
installed package has) through the import system, each from its own source and file name: they
import each other exactly as they do locally (``from .protocol import Event``), and a traceback
names ``ssh_ipykernel/remote/keeper.py`` and the line (``traceback`` also shows its text, through
``get_source``). The modules are made when first imported, so a session loads only what it uses.

Compiling the modules is most of what a session's python does before it starts a kernel
(60-90 ms of CPU on a busy host, on every start and restart), so their code is cached:
``$XDG_CACHE_HOME/ssh_ipykernel/code`` (default ``~/.cache``), one file per module source and
interpreter (the name is a hash of both), written atomically, read only from a 0700 directory
of the user's own and from files of the user's own. Nothing secret is in it. Entries written
more than ``CACHE_DAYS`` ago go whenever a new one is written (an upgrade's; one still in use
is written again at its next miss); PYTHONDONTWRITEBYTECODE (``-B``) turns the writing off;
any error means the module is compiled as without a cache.

Runs on the remote: standard library only, Python >= 3.8 (the one-line loader before it has
refused older ones).
"""
import os
import sys
from importlib.machinery import ModuleSpec

PACKAGE = "ssh_ipykernel_remote"
CACHE_DAYS = 30
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
        exec(compiled(filename, source), module.__dict__)  # noqa: S102 (the shipped module itself)

    def get_source(self, fullname: str) -> "str | None":
        """For linecache: the text of a shipped module's lines in a traceback."""
        entry = self.sources.get(fullname.rpartition(".")[2]) if fullname.startswith(self.package + ".") else None
        return entry[1] if entry else None


def cache_dir() -> "str | None":
    """The code cache's directory, made if need be; None if it is not ours alone."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "ssh_ipykernel", "code")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # another user could put code here: not a cache to run from
    return path


def compiled(filename: str, source: str):  # noqa: ANN201 - a code object
    """``source`` compiled, from the cache when it holds it."""
    import hashlib
    import marshal

    directory = cache_dir()
    key = hashlib.sha256(("%s\0%s\0%s" % (sys.version, filename, source)).encode("utf-8", "surrogatepass"))
    path = os.path.join(directory, key.hexdigest()[:40]) if directory else None
    if path is not None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                if os.fstat(fd).st_uid == os.getuid():
                    with os.fdopen(os.dup(fd), "rb") as f:
                        return marshal.loads(f.read())
            finally:
                os.close(fd)
        except (OSError, ValueError, EOFError, TypeError):
            pass
    # dont_inherit: each module's own __future__ imports, not this program's.
    code = compile(source, filename, "exec", dont_inherit=True)
    if path is not None and not sys.dont_write_bytecode:
        store(path, marshal.dumps(code))
    return code


def store(path: str, data: bytes) -> None:
    """Write a cache entry atomically (a reader never sees half of one), and let go of entries
    written more than CACHE_DAYS ago (those of earlier versions)."""
    import time

    directory = os.path.dirname(path)
    temporary = os.path.join(directory, ".%s.%d" % (os.path.basename(path), os.getpid()))
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(temporary, path)
        old = time.time() - CACHE_DAYS * 86400
        for name in os.listdir(directory):
            entry = os.path.join(directory, name)
            if os.lstat(entry).st_mtime < old:
                os.unlink(entry)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


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
