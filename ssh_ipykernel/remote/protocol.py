"""The agent's wire protocol and its pure helpers: parameters, events, sentinel exit codes.

Part of the remote agent (see bootstrap.py): shipped as source, standard library only at module
level, Python >= 3.8.
"""
from __future__ import annotations

import json
import os
import re

PROTOCOL = 2


class Mode:
    """What a session asks of the agent (the ``mode`` parameter)."""

    START = "start"  # write the connection file, start a keeper and its kernel
    ATTACH = "attach"  # reach the keeper of a running kernel (after a lost connection)
    WATCH = "watch"  # a kernel somebody else started (``ssh-ipykernel connect``)
    POOLS = "pools"  # list this user's warm pools (remote/pools.py, for ``ssh-ipykernel status``)


MODES = (Mode.START, Mode.ATTACH, Mode.WATCH, Mode.POOLS)


class PoolOp:
    """Requests on a warm pool's socket (remote/warmpool.py, which imports nothing of the
    package and spells them itself), one JSON line each."""

    START = "start"  # fork a kernel: answered with its pid, later with its exit code
    HOLD = "hold"  # keep the pool while this connection is open
    INFO = "info"  # the pool's facts (pid, python, memory, kernels, when it ends); then it hangs up


class Op:
    """Commands a client sends the keeper (or a watch session), one JSON line each."""

    PING = "ping"  # answered with ``pong``: the proxy's loss detection
    INTERRUPT = "interrupt"
    SHUTDOWN = "shutdown"
    DETACH = "detach"  # this client leaves; the kernel stays
    REPLACED = "replaced"  # from a new kernel of the same Jupyter kernel (key_sha256)
    KEEPALIVE = "keepalive"  # counts as hearing from the client, nothing else
    STREAM = "stream"  # this client carries a proxy's channels from now on (remote/streams.py)


#: Each op and the fields it must carry (name -> type).
OP_FIELDS = {
    Op.PING: {},
    Op.INTERRUPT: {},
    Op.SHUTDOWN: {},
    Op.DETACH: {},
    Op.REPLACED: {"key_sha256": str},
    Op.KEEPALIVE: {},
    # token: the proxy's; conns: {number: [channel, bytes held]}; limit: bytes kept (--output-buffer)
    Op.STREAM: {"token": str, "conns": dict, "limit": int},
}


class Event:
    """What the agent, the keeper and the probe send back, one JSON line each."""

    READY = "ready"  # the kernel runs: pid, ports, versions, paths
    ERROR = "error"  # code (ERROR_EXIT_CODES, or bad_op/bad_event) and message
    EXITED = "exited"  # the kernel ended: returncode, reason
    PONG = "pong"  # the answer to a ping
    LOG = "log"  # new text of the kernel's log
    PROBE = "probe"  # remote/probe.py's report (check, add --remote-kernel)
    POOLS = "pools"  # remote/pools.py's report: this user's warm pools on the host
    STREAM = "stream"  # the answer to the stream op: {number: bytes held, or -1 if gone}
    HELLO = "hello"  # an agent server's greeting (remote/agentserver.py): send the parameters


_NUMBER = (int, float)
_OPTIONAL_INT = (int, type(None))
_OPTIONAL_STR = (str, type(None))
#: Each event and the fields it must carry (name -> type or tuple of types).
EVENT_FIELDS = {
    Event.READY: {"pid": _OPTIONAL_INT, "ports": dict},
    Event.ERROR: {"code": str, "message": str},
    Event.EXITED: {"returncode": _OPTIONAL_INT, "reason": _OPTIONAL_STR},
    Event.PONG: {},
    Event.LOG: {"text": str},
    Event.PROBE: {},
    Event.POOLS: {"pools": list},
    Event.STREAM: {"conns": dict},
    Event.HELLO: {},
}

# Sentinel exit codes, translated into sentences by ssh_ipykernel.remote_errors (keep in sync).
EXIT_PYTHON_NOT_FOUND = 90  # emitted by the sh wrapper, not by this module
EXIT_PYTHON_TOO_OLD = 91  # emitted by the one-line loader
EXIT_BAD_PARAMS = 92
EXIT_NO_IPYKERNEL = 93
EXIT_NO_JUPYTER_CLIENT = 94
EXIT_CONNECTION_FILE = 95
EXIT_KERNEL_START = 96
EXIT_NO_KERNEL = 97  # attach: no keeper answers at that socket (the kernel has ended)
EXIT_PRE_COMMAND = 89  # emitted by the sh wrapper when --pre-command fails
EXIT_KERNELSPEC = 98  # --remote-kernel: no such kernelspec on the remote, or unusable
EXIT_WORKDIR = 99  # --workdir does not exist there (or is not a directory we may enter)

ERROR_EXIT_CODES = {
    "bad_params": EXIT_BAD_PARAMS,
    "no_ipykernel": EXIT_NO_IPYKERNEL,
    "no_jupyter_client": EXIT_NO_JUPYTER_CLIENT,
    "connection_file": EXIT_CONNECTION_FILE,
    "kernel_start": EXIT_KERNEL_START,
    "no_kernel": EXIT_NO_KERNEL,
    "kernelspec": EXIT_KERNELSPEC,
    "workdir": EXIT_WORKDIR,
}

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KERNEL_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# jupyter_client's rule for kernelspec names.
KERNEL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
#: Where a kernel command takes the path of its connection file.
CONNECTION_FILE_FIELD = "{connection_file}"
# Grace periods of the shutdown ladder: shutdown_request, then SIGTERM, then SIGKILL.
SHUTDOWN_REQUEST_WAIT = 2.5  # as jupyter_client: SIGTERM after half its shutdown_wait_time (5 s)
SHUTDOWN_REPLY_WAIT = 1.0
SIGTERM_WAIT = 2.0
#: How long a warm pool outlives the last kernel it served (--warm): a restart or the next
#: notebook within this time starts warm.
DEFAULT_WARM_IDLE = 600.0
#: The keeper forgets a client (a proxy's session) silent for this long: a cut link gives no EOF.
DEFAULT_CLIENT_TIMEOUT = 30.0


def kernel_kept_for(grace: "float | None", client_timeout: float) -> "float | None":
    """The longest a keeper keeps its kernel after a proxy's last word: it counts a silent
    client as gone after ``client_timeout`` seconds, then keeps the kernel for ``grace`` (see
    Keeper._watch). None: for ever (grace "never"). The proxy gives up on a lost connection
    only once this has surely passed."""
    if grace is None:
        return None
    return client_timeout + grace


class BootstrapError(Exception):
    """A failure with a code the local side turns into a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def exit_code(self) -> int:
        return ERROR_EXIT_CODES.get(self.code, EXIT_KERNEL_START)


class AgentParams:
    """The agent's parameters: the one JSON line that follows its source on stdin.

    Built by the local side (``start``/``attach``/``watch``, or the constructor for the probe),
    sent with ``to_json``, checked by the agent with ``from_json``; the key travels only here.
    A plain class rather than a dataclass: importing dataclasses costs the remote python an
    ``inspect`` import on every start and re-attach.
    """

    #: Every parameter and its default, in the order they are sent.
    FIELDS = {
        "protocol": PROTOCOL,
        "mode": Mode.START,
        "kernel_id": "",
        # start
        "key": "",
        "signature_scheme": "",
        "kernel_name": "",
        "env": None,  # {} when sent: extra environment of the kernel
        "grace": None,  # seconds with no client before the kernel is shut down; None: never
        "client_timeout": None,  # seconds of silence after which a client counts as gone
        "remote_kernel": None,  # a kernelspec name on the remote
        "kernel_cmd": None,  # an argv list with {connection_file}
        "workdir": None,
        "warm": None,  # seconds a warm pool outlives its last kernel (remote/warm.py); None: no warm kernels
        "serve": False,  # keep an agent server for this kernel's restarts (remote/agentserver.py), as long as warm
        # attach
        "socket": None,
        # watch
        "connection_file": None,
        # pools: the remote runtime dirs the pools' sockets are in (where the kernels' files were)
        "runtime_dirs": None,
    }
    #: The parameters each mode sends (the others keep their defaults).
    MODE_FIELDS = {
        Mode.START: ("protocol", "mode", "kernel_id", "key", "signature_scheme", "kernel_name", "env", "grace",
                     "client_timeout", "remote_kernel", "kernel_cmd", "workdir", "warm", "serve"),
        Mode.ATTACH: ("protocol", "mode", "kernel_id", "socket"),
        Mode.WATCH: ("protocol", "mode", "kernel_id", "connection_file"),
        Mode.POOLS: ("protocol", "mode", "kernel_id", "runtime_dirs"),
    }
    __slots__ = tuple(FIELDS)

    def __init__(self, **values: object) -> None:
        unknown = set(values) - set(self.FIELDS)
        if unknown:
            raise TypeError("unknown agent parameters: %s" % ", ".join(sorted(unknown)))
        for name, default in self.FIELDS.items():
            setattr(self, name, values.get(name, default))
        if self.env is None:
            self.env = {}

    # -- the local side builds them ------------------------------------------------------------
    @classmethod
    def start(cls, **values: object) -> "AgentParams":
        """Start a kernel (kernel_id, key, signature_scheme, kernel_name, env, grace, ...)."""
        return cls(mode=Mode.START, **values)

    @classmethod
    def attach(cls, *, kernel_id: str, socket: str) -> "AgentParams":
        """Reach the keeper listening at ``socket`` again."""
        return cls(mode=Mode.ATTACH, kernel_id=kernel_id, socket=socket)

    @classmethod
    def watch(cls, *, kernel_id: str, connection_file: str) -> "AgentParams":
        """Read a running kernel's connection file and answer pings."""
        return cls(mode=Mode.WATCH, kernel_id=kernel_id, connection_file=connection_file)

    @classmethod
    def pools(cls, *, runtime_dirs: "list[str]") -> "AgentParams":
        """List the warm pools whose sockets are in ``runtime_dirs`` (and any other of the user's)."""
        return cls(mode=Mode.POOLS, kernel_id="status", runtime_dirs=list(runtime_dirs))

    def to_dict(self) -> dict:
        names = self.MODE_FIELDS.get(self.mode, tuple(self.FIELDS))
        values = {name: getattr(self, name) for name in names}
        if values.get("kernel_cmd") is not None:
            values["kernel_cmd"] = list(values["kernel_cmd"])
        return values

    def to_json(self) -> str:
        """One line of JSON (no newline)."""
        return json.dumps(self.to_dict())

    # -- the agent checks them ----------------------------------------------------------------
    @classmethod
    def from_json(cls, line: "bytes | str") -> "AgentParams":
        """Parse and check one line; raise BootstrapError('bad_params') if it is malformed."""
        try:
            values = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
        except ValueError as e:
            raise BootstrapError("bad_params", "parameters are not valid JSON: %s" % e) from e
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: object) -> "AgentParams":
        """Check decoded parameters; raise BootstrapError('bad_params') if they are malformed."""
        if not isinstance(values, dict):
            raise BootstrapError("bad_params", "parameters are not a JSON object")
        if values.get("protocol") != PROTOCOL:
            raise BootstrapError(
                "bad_params",
                "protocol %r, this agent speaks %d" % (values.get("protocol"), PROTOCOL),
            )
        unknown = sorted(str(name) for name in values if name not in cls.FIELDS)
        if unknown:
            raise BootstrapError("bad_params", "unknown parameters: %s" % ", ".join(unknown))
        params = cls(**values)
        params.validate()
        return params

    def validate(self) -> None:
        """Raise BootstrapError('bad_params') naming the first malformed parameter."""
        if not isinstance(self.kernel_id, str) or not _KERNEL_ID_RE.match(self.kernel_id):
            raise BootstrapError("bad_params", "kernel_id %r is not a plain identifier" % (self.kernel_id,))
        if self.mode not in MODES:
            raise BootstrapError("bad_params", "mode %r is not one of %s" % (self.mode, ", ".join(MODES)))
        if self.mode == Mode.ATTACH:
            sock = self.socket
            if not isinstance(sock, str) or not sock.endswith(".sock") or "\0" in sock:
                raise BootstrapError("bad_params", "socket %r is not a keeper socket path" % (sock,))
            return
        if self.mode == Mode.WATCH:
            path = self.connection_file
            if not isinstance(path, str) or not path or "\0" in path:
                raise BootstrapError("bad_params", "connection_file %r is not a path" % (path,))
            return
        if self.mode == Mode.POOLS:
            dirs = self.runtime_dirs
            if not isinstance(dirs, list) or not all(isinstance(d, str) and d and "\0" not in d for d in dirs):
                raise BootstrapError("bad_params", "runtime_dirs %r is not a list of paths" % (dirs,))
            return
        for name in ("key", "signature_scheme", "kernel_name"):
            if not isinstance(getattr(self, name), str):
                raise BootstrapError("bad_params", "%s is not a string" % name)
        for name in ("client_timeout", "grace", "warm"):
            value = getattr(self, name)
            # grace None means "never": the kernel waits for its proxy forever.
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                                      or (name == "client_timeout" and value == 0)):
                raise BootstrapError("bad_params", "%s %r is not a positive number" % (name, value))
        if not isinstance(self.serve, bool):
            raise BootstrapError("bad_params", "serve %r is not true or false" % (self.serve,))
        if not isinstance(self.env, dict):
            raise BootstrapError("bad_params", "env is not an object")
        for name, value in self.env.items():
            if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
                raise BootstrapError("bad_params", "environment variable name %r is not valid" % (name,))
            if not isinstance(value, str) or "\0" in value:
                raise BootstrapError("bad_params", "value of %s is not a string" % name)
        self._validate_kernel_choice()

    def _validate_kernel_choice(self) -> None:
        """remote_kernel (a kernelspec name), kernel_cmd (an argv list) and workdir (a path)."""
        remote_kernel, kernel_cmd, workdir = self.remote_kernel, self.kernel_cmd, self.workdir
        if remote_kernel is not None and (not isinstance(remote_kernel, str) or not KERNEL_NAME_RE.match(remote_kernel)):
            raise BootstrapError("bad_params", "remote_kernel %r is not a kernelspec name" % (remote_kernel,))
        if kernel_cmd is not None:
            if (not isinstance(kernel_cmd, (list, tuple)) or not kernel_cmd
                    or not all(isinstance(arg, str) and "\0" not in arg for arg in kernel_cmd)):
                raise BootstrapError("bad_params", "kernel_cmd is not a non-empty list of strings")
            if not any(CONNECTION_FILE_FIELD in arg for arg in kernel_cmd):
                raise BootstrapError("bad_params", "kernel_cmd does not take %s" % CONNECTION_FILE_FIELD)
        if remote_kernel is not None and kernel_cmd is not None:
            raise BootstrapError("bad_params", "remote_kernel and kernel_cmd exclude each other")
        if workdir is not None and (not isinstance(workdir, str) or not workdir or "\0" in workdir):
            raise BootstrapError("bad_params", "workdir %r is not a path" % (workdir,))

    @property
    def default_kernel(self) -> bool:
        """ipykernel in the agent's python (neither remote_kernel nor kernel_cmd)."""
        return not (self.remote_kernel or self.kernel_cmd)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentParams) and all(
            getattr(self, name) == getattr(other, name) for name in self.FIELDS)

    def __repr__(self) -> str:  # never the key: this may end up in a log
        shown = ", ".join("%s=%r" % (n, getattr(self, n)) for n in self.MODE_FIELDS.get(self.mode, ()) if n != "key")
        return "AgentParams(%s)" % shown


def validate_params(values: object) -> AgentParams:
    """Decoded parameters checked (see AgentParams.from_dict)."""
    return AgentParams.from_dict(values)


def kernel_environment(base: dict, extra: dict, keeper_pid: int) -> dict:
    """The kernel's environment: the login environment plus the user's --env values.

    JPY_PARENT_PID names the keeper: ipykernel exits when its parent changes, so a keeper killed
    with SIGKILL cannot leave an orphaned kernel behind. (The keeper is a daemon that outlives
    the SSH session on purpose; nothing else is a valid parent.)
    """
    env = dict(base)
    env.update(extra)
    env["JPY_PARENT_PID"] = str(keeper_pid)
    return env


def fingerprint(data: bytes) -> str:
    """64 bits that tell two versions of something apart (not a defence against anyone: no
    hashlib, which in the proxy would load OpenSSL, ~4 MB of its resident memory)."""
    import zlib

    return "%08x%08x" % (zlib.crc32(data), zlib.adler32(data))


def bundle_id(sources: dict) -> str:
    """The identity of the agent's code: its modules' names, file names and sources, as the
    loader has them on the remote (agentserver.py) and the proxy reads them (session/bundle.py)."""
    return fingerprint("".join("%s\0%s\0%s\0" % (name, sources[name][0], sources[name][1])
                               for name in sorted(sources)).encode("utf-8", "surrogatepass"))


def runtime_dir() -> str:
    """Where the connection and log files go: Jupyter's runtime dir of the remote user, 0700."""
    from jupyter_core.paths import jupyter_runtime_dir  # comes with jupyter_client

    path = jupyter_runtime_dir()  # honours JUPYTER_RUNTIME_DIR
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def package_version(distribution: str) -> str:
    try:  # package metadata: no need to import the package itself
        from importlib.metadata import version

        return version(distribution)
    except Exception:  # noqa: BLE001 - a version string is informational only
        return "?"


def encode(message: dict) -> bytes:
    """One JSON line."""
    return (json.dumps(message) + "\n").encode("utf-8")


def event_line(event: str, **fields: object) -> bytes:
    """One event as a JSON line (``event`` must be one of Event)."""
    assert event in EVENT_FIELDS, event
    fields["event"] = event
    return encode(fields)


def op_line(op: str, **fields: object) -> bytes:
    """One command as a JSON line (``op`` must be one of Op)."""
    assert op in OP_FIELDS, op
    fields["op"] = op
    return encode(fields)


def _check_fields(kind: str, message: dict, required: dict, code: str) -> None:
    for name, types in required.items():
        if name not in message:
            raise BootstrapError(code, "%s %r has no %s" % (kind, message.get(kind), name))
        value = message[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise BootstrapError(code, "%s %r: %s is %r" % (kind, message.get(kind), name, value))


def parse_op(line: "bytes | str") -> dict:
    """A client's command, checked; raise BootstrapError('bad_op') if it is not one we know."""
    try:
        message = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except ValueError as e:
        raise BootstrapError("bad_op", "a command is not valid JSON: %r" % (line[:80],)) from e
    if not isinstance(message, dict):
        raise BootstrapError("bad_op", "a command is not a JSON object: %r" % (line[:80],))
    op = message.get("op")
    if op not in OP_FIELDS:
        raise BootstrapError("bad_op", "unknown op %r (known: %s)" % (op, ", ".join(sorted(OP_FIELDS))))
    _check_fields("op", message, OP_FIELDS[op], "bad_op")
    return message


def check_event(message: object) -> dict:
    """An event from the remote, checked; raise BootstrapError('bad_event') if malformed."""
    if not isinstance(message, dict):
        raise BootstrapError("bad_event", "an event is not a JSON object: %r" % (message,))
    kind = message.get("event")
    if kind not in EVENT_FIELDS:
        raise BootstrapError("bad_event", "unknown event %r" % (kind,))
    _check_fields("event", message, EVENT_FIELDS[kind], "bad_event")
    if kind == Event.READY:
        ports = message["ports"]
        if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in ports.items()):
            raise BootstrapError("bad_event", "event 'ready': ports is %r" % (ports,))
    return message


def write_event(out, event: str, **fields: object) -> None:
    """One event line to the proxy."""
    try:
        out.write(event_line(event, **fields))
        out.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the proxy is gone; the kernel's fate no longer depends on telling it


def read_params(stream) -> AgentParams:
    """The parameter line that follows the agent's source on stdin, checked."""
    return AgentParams.from_json(stream.readline())
