"""The kernel's side of a SLURM job: a launcher that holds the allocation, and the step that asks it
for a process.

Why a launcher: SLURM ends every process a job step started when the step ends (proctrack), so
a keeper started by ``srun`` would die with the session that started it. The job's batch step
(``launcher_main``, the whole batch script) lives as long as the job; it listens on a unix socket
in a node-local 0700 directory (``job_dir``), and a session's step (``spawn_main``, run by
``srun --jobid=J --overlap``) connects to it and hands over its own stdin, stdout and stderr
(SCM_RIGHTS) with the command to run. The launcher forks that command, in the batch step, on
those descriptors: the agent (bootstrap.py) then talks to the proxy through the step's stdio
exactly as through an ssh session, and the keeper it forks stays in the batch step, untouched
when the session's step ends. The step waits for the command and exits with its exit code.

The launcher is a child subreaper: the keepers (which double-fork) become its children, so it
knows when the last one has ended. It then waits ``LINGER`` seconds for a new kernel (Jupyter's
restart starts one at once, with the same job) and exits, which ends the job: nothing is left
in the queue.

Shipped as the source of a ``python -c`` (not secret: no key, no parameters). Standard library
only, Python >= 3.8, Linux (prctl).
"""
import json
import os
import shutil
import signal
import socket
import struct
import sys
import threading
import time

#: Seconds the launcher waits for the first kernel after the job started.
FIRST_WAIT = 120.0
#: Seconds the launcher waits for another kernel once the last one ended (a restart).
LINGER = 10.0
#: spawn_main's exit code when there is no launcher in the job (it ended, or never started).
EXIT_NO_LAUNCHER = 75
SOCKET_NAME = "launcher.sock"
#: How a warm pool (remote/warm.py: TITLE) shows in /proc/PID/cmdline. An orphaned pool (its
#: keeper ended) is adopted by the launcher, but it is no kernel: it must not hold the job.
WARM_POOL_TITLE = "ssh_ipykernel-warm-pool"
PR_SET_CHILD_SUBREAPER = 36
MAX_REQUEST = 1 << 20


def _is_warm_pool(pid: int) -> bool:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read(len(WARM_POOL_TITLE) + 1) == WARM_POOL_TITLE.encode() + b"\0"
    except OSError:
        return False


def job_dir(job_id: str) -> str:
    """The job's node-local directory (0700): the launcher's socket and the kernels' runtime files.

    /tmp, not the home: the home is usually NFS, shared by every node, where a unix socket made
    on one node looks like a dead one from another (and the agent removes dead kernels' files)."""
    return os.path.join("/tmp", "sik-%d-%s" % (os.getuid(), job_id))


def make_private_dir(path: str) -> None:
    """Make ``path`` 0700, or accept it only if it is ours and 0700 already (``/tmp`` is shared)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise SystemExit("ssh_ipykernel: %s is not a private directory of this user" % path)


class Launcher:
    """The batch step's server; see the module docstring."""

    def __init__(self, job_id: str) -> None:
        self.directory = job_dir(job_id)
        self.children = set()  # type: set  # live children, adopted keepers included
        self.spawned = set()  # type: set  # commands forked for a step, reaped by its thread
        self.lock = threading.Lock()
        self.idle_since = time.monotonic()
        self.first = True
        #: The job's working directory (sbatch's: the login session's, usually the home): the
        #: kernels start there, as they would in a login shell, not in our socket's directory.
        self.workdir = os.getcwd()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.finish(143))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        make_private_dir(self.directory)
        os.makedirs(os.path.join(self.directory, "runtime"), mode=0o700, exist_ok=True)
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # without it the job ends at its time limit or by scancel (the proxy's shutdown)
        os.chdir(self.directory)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            try:
                os.unlink(SOCKET_NAME)
            except OSError:
                pass
            listener.bind(SOCKET_NAME)
        finally:
            os.umask(old)
        listener.listen(16)
        listener.settimeout(1.0)
        while True:
            self.reap()
            with self.lock:
                busy = bool(self.children)
                if busy:
                    self.idle_since = time.monotonic()
                    self.first = False
            wait = FIRST_WAIT if self.first else LINGER
            if not busy and time.monotonic() - self.idle_since > wait:
                self.finish(0)
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def reap(self) -> None:
        """Count our live children (the spawned commands and, adopted, the keepers) and reap the
        adopted ones that ended; a spawned command is reaped by the thread that serves it."""
        me, alive = os.getpid(), set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if len(fields) < 2 or int(fields[1]) != me:
                continue
            pid = int(name)
            if fields[0] != "Z":
                if not _is_warm_pool(pid):
                    alive.add(pid)
                continue
            with self.lock:
                spawned = pid in self.spawned
            if not spawned:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        with self.lock:
            self.children = alive | self.spawned

    def serve(self, conn: socket.socket) -> None:
        """One spawn request: a JSON line with the command, the client's stdio attached."""
        fds = []  # type: list
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != os.getuid():
                return
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                msg, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(3 * 4))
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds += list(struct.unpack("%di" % (len(payload) // 4), payload[: len(payload) // 4 * 4]))
                if not msg:
                    break
                data += msg
            command = json.loads(data.decode("utf-8"))["command"]
            if len(fds) != 3 or not isinstance(command, str):
                return
            with self.lock:
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child
                    try:
                        for target, fd in enumerate(fds):
                            os.dup2(fd, target)
                        os.closerange(3, 65536)
                        os.chdir(self.workdir)
                        os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(self.directory, "runtime")
                        signal.signal(signal.SIGTERM, signal.SIG_DFL)
                        signal.signal(signal.SIGHUP, signal.SIG_DFL)
                        os.execv("/bin/sh", ["/bin/sh", "-c", command])
                    finally:
                        os._exit(127)
                self.spawned.add(pid)
            for fd in fds:
                os.close(fd)
            fds = []
            # Reaped here, not by the main loop (reap() leaves self.spawned alone): its exit code
            # is the step's.
            _, status = os.waitpid(pid, 0)
            with self.lock:
                self.spawned.discard(pid)
            code = -(status & 0x7F) if status & 0x7F else status >> 8
            conn.sendall(b"%d\n" % (code if code >= 0 else 128 - code))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        finally:
            for fd in fds:  # not handed to a command
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()

    def finish(self, code: int) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        os._exit(code)


def launcher_main() -> None:
    """The batch script's program: serve spawn requests until the job has no kernel left."""
    Launcher(os.environ["SLURM_JOB_ID"]).run()


def spawn_main(command: str, wait: float = 0.0) -> None:
    """A session's job step: run ``command`` through the launcher, on our stdin/stdout/stderr.

    ``wait``: seconds to wait for the launcher to listen (a job that has just started may still be
    running its --pre-command); 0 for a job that ran kernels before, whose launcher is there or
    gone for good."""
    path = os.path.join(job_dir(os.environ["SLURM_JOB_ID"]), SOCKET_NAME)
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except OSError as e:
            sock.close()
            if time.monotonic() < deadline and isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
                time.sleep(0.05)
                continue
            sys.stderr.write("ssh_ipykernel: no kernel launcher in SLURM job %s: %s\n"
                             % (os.environ.get("SLURM_JOB_ID"), e))
            sys.stderr.flush()
            os._exit(EXIT_NO_LAUNCHER)
    request = (json.dumps({"command": command}) + "\n").encode("utf-8")
    sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", 0, 1, 2))])
    # From here on the command owns our stdio: close our copies so that its end of file is real.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    answer = b""
    while not answer.endswith(b"\n"):
        data = sock.recv(64)
        if not data:
            break
        answer += data
    try:
        os._exit(int(answer))
    except ValueError:
        os._exit(EXIT_NO_LAUNCHER)
