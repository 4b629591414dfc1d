"""The remote agent's entry point: sent to the remote python over ssh stdin and run there.

The ``remote`` modules are shipped as source, each under its own name (session/bundle.py: a
small loader on the remote makes them real modules of one package, so their imports of each other
work and a traceback names remote/<module>.py). They must only import the standard library at
module level and run on any Python >= 3.8 the user points us at. They are also importable
locally, so they are unit tested like any other module.

Protocol (one ssh session, no pty):

* stdin, from the local proxy: a line with the byte length of this source, the source, then one
  JSON line of parameters (the session key travels here, never on a command line). Mode
  ``start`` writes the connection file and starts a keeper (keeper.py: a daemon that owns the
  kernel and outlives this session); mode ``attach`` reaches the keeper of a running kernel.
  Either way this session then becomes a plain relay between its stdin/stdout and the keeper's
  unix socket, and the proxy speaks the keeper's protocol through it (JSON lines).
* On failure before the relay: one JSON ``error`` line (code, message) on stdout, and the exit
  status is the matching sentinel code.
* stderr: only errors of this session itself (the kernel's log arrives as ``log`` events).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from .unixsock import listen_unix
from .protocol import (DEFAULT_CLIENT_TIMEOUT, AgentParams, BootstrapError, Event, Mode, Op, op_line, parse_op,
                       read_params, write_event)

TYPE_CHECKING = False  # typing's, without importing typing on the remote (type checkers know the name)
if TYPE_CHECKING:
    from .agent import Agent


def main() -> None:
    stdin = sys.stdin.buffer
    # A SIGHUP from sshd when the connection drops must not kill us before we clean up.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        params = read_params(stdin)
        if params.mode == Mode.ATTACH:
            sock = connect_keeper(params.socket)
        elif params.mode == Mode.WATCH:
            watch(params.connection_file, stdin)
        elif params.mode != Mode.START:  # pools: remote/pools.py's own program, not the agent's
            raise BootstrapError("bad_params", "mode %r is not one of the agent's" % (params.mode,))
        else:
            if reader_gone(sys.stdout.fileno()):
                # The proxy gave up before we ran (a start that timed out during a slow
                # --pre-command): sshd has closed our stdout. Nobody would ever use the kernel.
                os._exit(0)
            sock = start_keeper(params)
    except BootstrapError as e:
        write_event(sys.stdout.buffer, Event.ERROR, code=e.code, message=e.message)
        sys.exit(e.exit_code)
    relay(stdin, sock, starting=params.mode == Mode.START)
    sys.stdout.flush()
    # Not a normal interpreter exit: the upstream thread may be blocked in a read on stdin's
    # buffer, and finalisation would abort trying to take that buffer's lock.
    os._exit(0)


def start_keeper(params: AgentParams) -> socket.socket:
    """Write the connection file, fork the keeper daemon, and return a connection to it."""
    # Imported here: an attach or watch session needs neither (the loader compiles a shipped
    # module only when it is imported, on every start and re-attach).
    from .agent import Agent
    from .keeper import Keeper  # noqa: F401 - made before the fork: an error here reaches the proxy

    agent = Agent(params)
    agent.prepare()
    if params.serve and params.warm is not None:
        # While this process has one thread and its login directory: the server is its fork.
        agent.agent_server = start_server(os.path.dirname(agent.connection_file), idle=float(params.warm))
    remove_stale(os.path.dirname(agent.connection_file))
    retire_predecessors(agent)
    try:
        # A kernel starting at the same moment must never find the name refusing connections:
        # it would take it for the socket of a dead keeper and remove this kernel's files.
        listener = listen_unix(agent.socket_file, 16)
    except OSError as e:
        agent.remove_files()
        raise BootstrapError("connection_file", "cannot create %s: %s" % (agent.socket_file, e)) from e
    grace = params.grace
    client_timeout = params.client_timeout or DEFAULT_CLIENT_TIMEOUT
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes
        try:
            os.setsid()  # no controlling terminal, no SIGHUP from the session's end
            if os.fork() > 0:
                os._exit(0)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # let go of the SSH session's pipes: it must be able to end
                os.dup2(devnull, fd)
            run_keeper(agent, listener, grace=None if grace is None else float(grace),
                       client_timeout=float(client_timeout))
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    listener.close()
    return connect_keeper(agent.socket_file)


def start_server(directory: str, *, idle: float) -> str:
    """This configuration's agent server (remote/agentserver.py): its socket, "" if none."""
    from .agentserver import ensure, shipped_sources, socket_path
    from .protocol import bundle_id

    sources = shipped_sources()
    if sources is None:
        return ""  # not a shipped agent (run from an installed package): no code to identify
    path = socket_path(directory, bundle=bundle_id(sources))
    try:
        return path if ensure(path, idle=idle, serve_session=main) else ""
    except OSError:
        return ""


def run_keeper(agent: Agent, listener: socket.socket, *, grace: "float | None", client_timeout: float) -> None:
    """The keeper daemon's life; whatever happens in it, the kernel does not outlive it."""
    from .keeper import Keeper

    try:
        Keeper(agent, listener, grace=grace, client_timeout=client_timeout).run()
    except BaseException:
        # A bug here must not orphan a kernel holding the key: nobody else would end it.
        agent.signal_kernel(signal.SIGKILL)
        agent.remove_files()
        raise


def connect_keeper(path: str) -> socket.socket:
    directory, name = os.path.split(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(directory or ".")
        sock.connect(name)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
        sock.close()
        raise BootstrapError("no_kernel", "no kernel is running at %s any more (%s)" % (path, e)) from e
    except OSError as e:
        sock.close()
        raise BootstrapError("no_kernel", "cannot reach the kernel's keeper at %s: %s" % (path, e)) from e
    return sock


def reader_gone(fd: int) -> bool:
    """Whether nothing reads ``fd`` any more: a pipe whose reader closed polls as POLLERR on
    Linux, a socket whose peer closed as POLLHUP. No poll() (never on Linux or macOS): False."""
    import select

    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def relay(stdin, sock: socket.socket, *, starting: bool = False) -> None:
    """Copy stdin to the keeper and the keeper to stdout until either side ends.

    ``starting``: this session started the kernel. If the keeper's first words (the ``ready``
    event) cannot be written to stdout, the proxy that asked for the kernel is gone before it
    learnt of it, and nobody else knows the kernel exists: it is shut down instead of being
    kept for a grace period.
    """

    def upstream() -> None:
        try:
            while True:
                data = stdin.read1(65536)  # read1: first whatever read_params left buffered
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)  # the keeper sees this client leave
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    out = sys.stdout.fileno()
    delivered = False
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            while data:
                data = data[os.write(out, data):]
                delivered = True
    except OSError:
        # Our stdout is gone with the connection: the keeper notices our socket closing.
        if starting and not delivered:
            try:
                sock.sendall(op_line(Op.SHUTDOWN))
            except OSError:
                pass
    sock.close()


def watch(path: str, stdin) -> None:
    """Report a kernel's connection info (key included: this is the session's stdout, not a
    command line), then answer pings until stdin ends, and say when its ports close."""
    import json

    path = os.path.abspath(os.path.expanduser(path))
    try:
        with open(path) as f:
            info = json.load(f)
        ports = {k: int(v) for k, v in info.items() if k.endswith("_port")}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise BootstrapError("no_kernel", "cannot read the connection file %s: %s" % (path, e)) from e
    if not ports.get("hb_port"):
        raise BootstrapError("no_kernel", "%s is not a kernel connection file (no hb_port)" % path)
    ip = info.get("ip") or "127.0.0.1"
    ip = "127.0.0.1" if ip in ("0.0.0.0", "*", "") else ip
    keeper = path[: -len(".json")] + ".sock" if path.endswith(".json") else ""
    if keeper:
        try:
            connect_keeper(keeper).close()
        except BootstrapError:
            keeper = ""
    out = sys.stdout.buffer
    write_event(out, Event.READY, pid=0, ports=ports, ip=ip, key=info.get("key", ""),
                signature_scheme=info.get("signature_scheme", "hmac-sha256"),
                transport=info.get("transport", "tcp"), kernel_name=info.get("kernel_name", ""),
                connection_file=path, socket=keeper, kernel_id="", hostname=socket.gethostname())
    refused = 0
    for line in iter(stdin.readline, b""):
        if not line.strip():
            continue
        try:
            op = parse_op(line)["op"]
        except BootstrapError as e:
            write_event(out, Event.ERROR, code=e.code, message=e.message)
            continue
        if op != Op.PING:
            continue  # nothing else means anything for a kernel we do not own
        probe = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        probe.settimeout(2.0)
        try:
            probe.connect((ip, ports["hb_port"]))
            refused = 0
        except OSError:
            refused += 1
        finally:
            probe.close()
        if refused >= 2:  # twice in a row: not a kernel still binding or a busy moment
            write_event(out, Event.EXITED, returncode=None, reason="ports_closed")
            break
        write_event(out, Event.PONG)
    sys.stdout.flush()
    os._exit(0)


def retire_predecessors(agent: Agent) -> None:
    """Tell keepers of earlier kernels with our kernel id and key that we replace them.

    Jupyter restarts a kernel with the same connection file; after a hard restart (its proxy
    killed with SIGKILL) the old kernel would otherwise wait out its grace period for nobody.
    The key proves it is the same Jupyter kernel, not a namesake from another machine.
    """
    import hashlib

    prefix = "kernel-ssh-%s-" % agent.kernel_id
    mine = os.path.basename(agent.socket_file)
    note = op_line(Op.REPLACED, key_sha256=hashlib.sha256(agent.params.key.encode()).hexdigest())
    try:
        os.chdir(os.path.dirname(agent.socket_file))  # relative socket names, as in start_keeper
        names = os.listdir(".")
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".sock") and name != mine:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2.0)
            try:
                sock.connect(name)
                sock.sendall(note)
                sock.shutdown(socket.SHUT_WR)
                # Read until the keeper hangs up (it has read the note by then): a unix socket
                # closed with unread data makes the peer's read fail with ECONNRESET, and the
                # keeper would lose the note along with its greeting to us.
                while sock.recv(65536):
                    pass
            except OSError:
                pass
            finally:
                sock.close()


def remove_stale(directory: str) -> None:
    """Remove the files of kernels whose keeper is gone (killed with SIGKILL, host crash)."""
    try:
        os.chdir(directory)  # relative socket names, as in start_keeper
        names = os.listdir(".")
    except OSError:
        return
    for name in names:
        if not (name.startswith("kernel-ssh-") and name.endswith(".sock")):
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(name)
            continue  # a live keeper
        except ConnectionRefusedError:
            pass
        except OSError:
            continue
        finally:
            probe.close()
        remove_ipc_of(name[: -len(".sock")] + ".json")
        for suffix in (".sock", ".json", ".log"):
            try:
                os.unlink(name[: -len(".sock")] + suffix)
            except OSError:
                pass


def remove_ipc_of(connection_file: str) -> None:
    """The socket directory of a dead kernel (its connection file's ``ip``, with ipc)."""
    import json

    from .connfile import remove_ipc_directory

    try:
        with open(connection_file) as f:
            info = json.load(f)
        if info.get("transport") == "ipc":
            remove_ipc_directory(os.path.dirname(info["ip"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass


if __name__ == "__main__":
    main()
