"""SLURM: the kernel in a job on a compute node, reached through the login node (--slurm).

The SSH host is the login node. ``sbatch`` (the user's options as separate words, never through a
shell) submits a job whose batch script is the launcher (remote/slurmnode.py); every session to the
kernel is a job step attached to that job (``srun --jobid=J --overlap``), whose stdin and stdout the
scheduler relays between the login node and the compute node: no ssh to nodes, nothing listening on
the login node or the cluster network. This module holds what is pure (options, the scheduler's
output read into typed values, the command texts) and the few scheduler commands run on the login
node over the transport (``Scheduler``); session/slurmkernel.py drives them for one kernel.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from . import exceptions as exc
from .remote import slurmnode
from .session.startcmd import LoginShell, StartCommand, Step, sh_quote

if TYPE_CHECKING:
    from .transport.base import Transport

#: Default of --queue-timeout: how long a job may wait in the queue before the start fails.
DEFAULT_QUEUE_TIMEOUT = 3600.0
#: States of a job that will not run (any more); squeue --states=all shows them for MinJobAge.
FINAL_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                          "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT", "GONE"})
WAITING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
                            "REQUEUE_FED"})
#: Options ssh_ipykernel sets itself (the job must be a batch job with our script).
RESERVED = ("--wrap", "--parsable", "--test-only", "-W", "--wait", "--array", "-a")
#: squeue's fields, separated by "|": id, state, reason, node list, time left, time used, limit,
#: batch host (the node of the batch step: the launcher's).
SQUEUE_FORMAT = "%i|%T|%r|%N|%L|%M|%l|%B"
#: What the job's state means, for the log.
WHY = {
    "TIMEOUT": "its time limit was reached",
    "CANCELLED": "it was cancelled (scancel)",
    "PREEMPTED": "it was preempted by the scheduler",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "its deadline passed",
    "OUT_OF_MEMORY": "it ran out of memory",
    "FAILED": "its batch step failed",
    "COMPLETED": "its launcher ended",
    "GONE": "the scheduler no longer knows it",
    "PENDING": "it was requeued (preempted, or its node failed); it is cancelled",
    "REQUEUED": "it was requeued (preempted, or its node failed); it is cancelled",
}


@dataclass(frozen=True)
class SlurmOptions:
    """--slurm 'SBATCH OPTIONS' (as written, and split into words) and --queue-timeout."""

    text: str
    args: Tuple[str, ...] = ()
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT


def parse_slurm_options(text: str, queue_timeout: float = DEFAULT_QUEUE_TIMEOUT) -> SlurmOptions:
    """Split --slurm like a shell would (quotes, backslashes), without running one; refuse what
    would change the job's kind (--wrap, --array ...) and words that are not options."""
    if "\0" in text or "\n" in text:
        raise exc.UsageError("--slurm contains a NUL byte or a line break: give sbatch options on one line")
    try:
        args = tuple(shlex.split(text))
    except ValueError as e:
        raise exc.UsageError(f"--slurm {text!r} cannot be split into words ({e}): check its quotes") from None
    for word in args:
        name = word.split("=", 1)[0]
        if name in RESERVED:
            raise exc.UsageError(f"--slurm cannot contain {name}: ssh_ipykernel submits its own batch script")
    if args and not args[0].startswith("-"):
        msg = f"--slurm {text!r} does not start with an option; give sbatch options, e.g. '--partition debug'"
        raise exc.UsageError(msg)
    if queue_timeout <= 0:
        raise exc.UsageError("--queue-timeout must be more than 0 seconds")
    return SlurmOptions(text=text, args=args, queue_timeout=queue_timeout)


# -- the scheduler's output ---------------------------------------------------------------------------

def parse_duration(text: str) -> Optional[float]:
    """SLURM's ``[days-]hours:minutes:seconds`` (or ``minutes:seconds``, ``minutes``) in seconds;
    None for UNLIMITED, NOT_SET, INVALID and anything else that is not a duration."""
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        return None
    days, a, b, c = match.groups()
    if days is not None:  # d-h, d-h:m, d-h:m:s
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
    elif c is not None:
        hours, minutes, seconds = int(a), int(b), int(c)
    elif b is not None:
        hours, minutes, seconds = 0, int(a), int(b)
    else:
        hours, minutes, seconds = 0, int(a), 0
    return float(((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unlimited"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass(frozen=True)
class JobStatus:
    """One job as squeue shows it (SQUEUE_FORMAT)."""

    job_id: str
    state: str
    reason: str = ""
    nodes: str = ""
    time_left: Optional[float] = None  # seconds; None: unlimited or unknown
    time_used: Optional[float] = None
    time_limit: Optional[float] = None
    batch_host: str = ""

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def waiting(self) -> bool:
        return self.state in WAITING_STATES

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES or not (self.running or self.waiting or self.state == "COMPLETING")

    def why_ended(self) -> str:
        """A sentence for the log: why the job ended."""
        reason = f", reason {self.reason}" if self.reason and self.reason != "None" else ""
        return f"SLURM job {self.job_id} is {self.state}{reason}: {WHY.get(self.state, 'it ended')}"


def parse_squeue(text: str, job_id: str) -> JobStatus:
    """squeue's line (SQUEUE_FORMAT) for ``job_id``; state GONE if it has none."""
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 8 and parts[0] == job_id:
            return JobStatus(job_id=job_id, state=parts[1].split()[0] if parts[1] else "GONE", reason=parts[2],
                             nodes=parts[3], time_left=parse_duration(parts[4]), time_used=parse_duration(parts[5]),
                             time_limit=parse_duration(parts[6]), batch_host=parts[7].strip())
    return JobStatus(job_id=job_id, state="GONE")


def parse_sbatch(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``id`` or ``id;cluster``); '' if there is none."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";")[0].strip()
    return job_id if job_id.isdigit() else ""


def parse_test_only(stderr: str) -> Dict[str, str]:
    """``sbatch --test-only``'s answer (on stderr): ``sbatch: Job 5 to start at 2026-... using 1
    processors on nodes c1 in partition debug`` -> {"start": ..., "nodes": ..., "partition": ...}."""
    match = re.search(r"to start at (\S+) using (\d+) processors on nodes (\S+) in partition (\S+)", stderr)
    if not match:
        return {}
    return {"start": match.group(1), "processors": match.group(2), "nodes": match.group(3),
            "partition": match.group(4)}


def scheduler_message(stderr: str) -> str:
    """The scheduler's own words from a refusal (``sbatch: error: ...`` lines), without noise."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return "\n".join(errors or lines)[-1000:]


# -- the commands ------------------------------------------------------------------------------------

def job_name(kernel_id: str) -> str:
    return f"sik-{kernel_id}"


def program(source: str, call: str) -> str:
    """A ``python -c`` program: a shipped module's source, then one call."""
    return f"{source}\n{call}\n"


def node_source() -> str:
    with open(slurmnode.__file__, encoding="utf-8") as f:
        return f.read()


def batch_script(steps: Sequence[Step], python: Optional[str]) -> str:
    """The job's batch script: the launcher, with --python found as for a login shell (after the
    --pre-command: a ``module load`` may be what puts it on PATH)."""
    launcher = program(node_source(), "launcher_main()")
    return "#!/bin/sh\n" + LoginShell(steps, program=launcher).build(python) + "\n"


def sbatch_command(options: SlurmOptions, kernel_id: str, *, test_only: bool = False) -> str:
    """The login shell's command that submits the job (script on stdin). Every user word is one
    quoted word: sbatch gets them as they were split, nothing reaches a shell."""
    words = ["sbatch", f"--job-name={job_name(kernel_id)}", "--output=/dev/null", "--error=/dev/null",
             *options.args, "--parsable"]
    if test_only:
        words.append("--test-only")
    return " ".join(sh_quote(word) for word in words)


def squeue_command(job_id: str) -> str:
    return f"squeue -h --states=all -j {sh_quote(job_id)} -o {sh_quote(SQUEUE_FORMAT)}"


def scancel_command(job_id: str) -> str:
    return f"scancel {sh_quote(job_id)}"


class Srun(StartCommand):
    """A session as a job step of the running job: ``srun --jobid=J --overlap`` runs the login
    shell's text on the job's node, its stdin and stdout relayed by the scheduler.

    ``--unbuffered``: otherwise slurmstepd holds the task's output back until a newline, and the
    channels' binary frames would wait. It gives the task a terminal for stdout, set raw here (slurm
    does so already; stty makes sure). ``spawn``: the command runs in the job's batch step through
    its launcher (remote/slurmnode.py), so that a keeper it starts outlives this step.
    """

    def __init__(self, job_id: str, steps: Sequence[Step] = (), *, spawn: bool = False,
                 launcher_wait: float = 0.0, node: str = "") -> None:
        self.job_id = job_id
        self.node = node  # the batch host, where the launcher and the keeper are (a multi-node job)
        self.steps = tuple(steps)
        self.spawn = spawn
        self.launcher_wait = launcher_wait  # seconds the spawn waits for a new job's launcher

    def build(self, python: Optional[str]) -> str:
        inner = LoginShell(self.steps).build(python)
        if self.spawn:
            inner = LoginShell(self.steps, program=program(node_source(), f"spawn_main({inner!r}, {self.launcher_wait!r})")).build(python)
        task = "stty raw -echo <&1 2>/dev/null; " + inner
        where = f"--nodelist={sh_quote(self.node)} " if self.node else ""
        return (f"exec srun --jobid={sh_quote(self.job_id)} --overlap --nodes=1 --ntasks=1 {where}--unbuffered "
                f"--quiet /bin/sh -c {sh_quote(task)}")


# -- running them on the login node ---------------------------------------------------------------------

def run_remote(transport: "Transport", command: str, *, stdin: bytes = b"",
               timeout: float = 30.0) -> Tuple[int, str, str]:
    """Run ``command`` on the login node over ``transport``; (exit code, stdout, stderr)."""
    proc = transport.start_command(command)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return 124, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


@dataclass
class Scheduler:
    """SLURM's commands on the login node, over one transport."""

    transport: "Transport"
    host: str = ""

    def submit(self, options: SlurmOptions, kernel_id: str, script: str) -> str:
        """``sbatch``; the job id. SchedulerError with the scheduler's message if it refuses."""
        rc, out, err = run_remote(self.transport, sbatch_command(options, kernel_id), stdin=script.encode())
        job_id = parse_sbatch(out) if rc == 0 else ""
        if not job_id:
            message = scheduler_message(err) or f"sbatch exited with code {rc}"
            msg = (f"SLURM refused the kernel's job on {self.host} (--slurm {options.text!r}): "
                   f"{message.splitlines()[-1] if message else ''}; check the partition, time limit and "
                   f"account (`sinfo`, `sacctmgr show assoc user=$USER` on the login node)")
            raise exc.SchedulerError(msg, host=self.host, detail=message)
        return job_id

    def test_only(self, options: SlurmOptions, kernel_id: str, script: str) -> Dict[str, str]:
        """``sbatch --test-only``: where and when the job would start; SchedulerError if refused."""
        rc, _out, err = run_remote(self.transport, sbatch_command(options, kernel_id, test_only=True),
                                   stdin=script.encode())
        found = parse_test_only(err)
        if rc != 0 or not found:
            message = scheduler_message(err) or f"sbatch --test-only exited with code {rc}"
            msg = f"SLURM would refuse the kernel's job on {self.host} (--slurm {options.text!r})"
            raise exc.SchedulerError(msg, host=self.host, detail=message)
        return found

    def status(self, job_id: str) -> Optional[JobStatus]:
        """The job's status, state GONE once the scheduler has forgotten it; None if squeue
        could not be asked (the connection is down)."""
        rc, out, err = run_remote(self.transport, squeue_command(job_id), timeout=20)
        if rc != 0 and "Invalid job id" not in err:
            return None
        return parse_squeue(out, job_id)

    def settled_status(self, job_id: str, wait: float = 15.0) -> Optional[JobStatus]:
        """The job's status once it is no longer COMPLETING (the scheduler says why a job ended
        only then: CANCELLED, TIMEOUT ...), waiting up to ``wait`` seconds for that."""
        deadline = time.monotonic() + wait
        while True:
            job = self.status(job_id)
            if job is None or job.state != "COMPLETING" or time.monotonic() > deadline:
                return job
            time.sleep(0.5)

    def exit_code(self, job_id: str) -> Optional[int]:
        """The batch script's exit code (``scontrol show job``'s ExitCode), None if unknown."""
        rc, out, _err = run_remote(self.transport, f"scontrol show job -o {sh_quote(job_id)}", timeout=20)
        match = re.search(r"\bExitCode=(\d+):(\d+)", out) if rc == 0 else None
        return int(match.group(1)) if match else None

    def cancel(self, job_id: str) -> bool:
        rc, _out, _err = run_remote(self.transport, scancel_command(job_id), timeout=20)
        return rc == 0


# -- the job of a Jupyter kernel, across restarts ------------------------------------------------------

@dataclass
class JobRecord:
    """Which job a Jupyter kernel (its kernel id) last ran in: a restart reuses it while it runs.
    Kept locally, in the state dir (0700), as ``slurm-<kernel id>.json``."""

    job_id: str
    host: str
    options: str
    extra: Dict[str, object] = field(default_factory=dict)

    @staticmethod
    def path(kernel_id: str, directory: Optional[str] = None) -> str:
        from .state import state_dir

        return os.path.join(directory or state_dir(), f"slurm-{kernel_id}.json")

    @classmethod
    def load(cls, kernel_id: str, directory: Optional[str] = None) -> Optional["JobRecord"]:
        try:
            with open(cls.path(kernel_id, directory), encoding="utf-8") as f:
                data = json.load(f)
            return cls(job_id=str(data["job_id"]), host=str(data["host"]), options=str(data["options"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, kernel_id: str, directory: Optional[str] = None) -> None:
        path = self.path(kernel_id, directory)
        tmp = f"{path}.{os.getpid()}"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            json.dump({"job_id": self.job_id, "host": self.host, "options": self.options}, f)
        os.replace(tmp, path)

    @classmethod
    def remove(cls, kernel_id: str, directory: Optional[str] = None) -> None:
        try:
            os.unlink(cls.path(kernel_id, directory))
        except OSError:
            pass


#: Records older than this are removed (their kernel never came back; no job lives that long).
RECORD_MAX_AGE = 14 * 86400.0


def prune_records(directory: Optional[str] = None, now: Optional[float] = None) -> None:
    """Remove job records not written for RECORD_MAX_AGE (a restart rewrites its kernel's)."""
    from .state import state_dir

    directory = directory or state_dir()
    now = time.time() if now is None else now
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith("slurm-") and name.endswith(".json"):
            path = os.path.join(directory, name)
            try:
                if now - os.stat(path).st_mtime > RECORD_MAX_AGE:
                    os.unlink(path)
            except OSError:
                pass


def read_records(directory: Optional[str] = None) -> List[Tuple[str, JobRecord]]:
    """Every (kernel id, record) in the state dir (``status``)."""
    from .state import state_dir

    directory = directory or state_dir()
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in sorted(names):
        if name.startswith("slurm-") and name.endswith(".json"):
            kernel_id = name[len("slurm-"):-len(".json")]
            record = JobRecord.load(kernel_id, directory)
            if record is not None:
                found.append((kernel_id, record))
    return found
