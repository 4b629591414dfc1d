"""``SlurmKernel``: a RemoteKernel whose keeper runs inside a SLURM job on a compute node.

Lifecycle on top of RemoteKernel's (see client.py), called by the proxy:

* ``start(timeout)`` — reuse the job this Jupyter kernel last ran in if it still runs (a restart),
  else ``sbatch`` one and report its queue progress in the log until it runs (at most
  --queue-timeout); then the agent starts through the job's launcher (slurm.Srun, spawn) and
  every later session (attach, the channels' stream) is a plain job step (slurm.Srun).
* ``attach`` — as RemoteKernel's; when it fails and the job has ended, KernelGoneError says why.
* ``ping`` — also warns once in the log when the job's time limit is near.
* ``why_ended()`` — the proxy, after the kernel ended: the scheduler's reason if the job ended.
* ``stop`` — as RemoteKernel's; a job that never got to run a kernel is cancelled.

The job ends by itself once no kernel has been in it for a few seconds (remote/slurmnode.py):
a shutdown leaves nothing in the queue, a restart finds the job still there.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

from .. import exceptions as exc
from ..slurm import (JobRecord, JobStatus, Scheduler, SlurmOptions, Srun, batch_script, format_duration,
                     prune_records)
from ..remote_errors import error_for_exit
from ..transport.base import Transport
from .client import KernelInfo, RemoteKernel

log = logging.getLogger(__name__)

#: Seconds between queue-progress lines in the log while the job waits.
PROGRESS_EVERY = 5.0
#: Seconds between squeue polls while the job waits (fast at first: a free cluster starts it at once).
POLL_FIRST, POLL_LATER = 0.3, 2.0
#: Seconds a new job's first session waits for the job's launcher to listen.
LAUNCHER_WAIT = 60.0
#: The log warns once when the job has less than this left (or at start if it has less already).
WARN_BEFORE = 300.0


class SlurmKernel(RemoteKernel):
    """One kernel in a SLURM job; see the module docstring."""

    def __init__(self, transport: Transport, *, slurm: SlurmOptions, log_to: Optional[Any] = None,
                 **kwargs: Any) -> None:
        super().__init__(transport, **kwargs)
        self.slurm = slurm
        self.log = log_to or log
        self.steps = getattr(self.command, "steps", ())
        self.direct = False  # the keeper's socket is on the node: only a job step reaches it
        self.job_id = ""
        self.job: Optional[JobStatus] = None
        self.reused = False
        self._ends_at: Optional[float] = None  # monotonic time of the job's time limit
        self._warned = False
        self._kernel_started = False
        self._end_reason = ""  # why the job ended, once known

    @property
    def scheduler(self) -> Scheduler:
        return Scheduler(self.transport, host=self.host)

    # -- start ----------------------------------------------------------------------------------
    def start(self, timeout: float) -> KernelInfo:
        t0 = time.monotonic()
        job = self._reusable_job()
        if job is None:
            job = self._submit_and_wait()
        self.log.info("SLURM job %s running on %s (%s left); starting the kernel in it (%.2f s)", job.job_id,
                      job.nodes, format_duration(job.time_left), time.monotonic() - t0)
        try:
            info = self._start_in(job, timeout)
        except exc.RemoteError as e:
            if not (self.reused and "no kernel launcher" in e.detail):
                raise
            # The job's launcher ended between our look and our start (its linger ran out).
            self.log.info("SLURM job %s is ending; submitting a new one", job.job_id)
            self.reused = False
            info = self._start_in(self._submit_and_wait(), timeout)
        self._kernel_started = True
        return info

    def _start_in(self, job: JobStatus, timeout: float) -> KernelInfo:
        self.job_id, self.job = job.job_id, job
        self._ends_at = None if job.time_left is None else time.monotonic() + job.time_left
        if job.time_left is not None:
            # The job's time limit caps the grace period: a keeper waiting past it would be
            # killed with the job anyway, and nothing should count on it.
            grace = self.params.grace
            self.params.grace = job.time_left if grace is None else min(float(grace), job.time_left)  # type: ignore[arg-type]
        # A new job's launcher may still be starting (its --pre-command, python): wait for it.
        self.command = Srun(job.job_id, self.steps, spawn=True, launcher_wait=0.0 if self.reused else LAUNCHER_WAIT,
                            node=job.batch_host)
        try:
            info = super().start(timeout)
        except exc.RemoteError as e:
            failure = self._batch_failure(job.job_id)
            if failure is None:
                raise
            raise failure from e
        finally:
            self.command = Srun(job.job_id, self.steps, node=job.batch_host)
        JobRecord(job_id=job.job_id, host=self.host_spec, options=self.slurm.text).save(self.kernel_id)
        self._warn_time_limit()
        return info

    def _reusable_job(self) -> Optional[JobStatus]:
        """The job this Jupyter kernel ran in before (a restart), if it runs with time to spare."""
        prune_records()
        record = JobRecord.load(self.kernel_id)
        if record is None or record.host != self.host_spec or record.options != self.slurm.text:
            return None
        job = self.scheduler.status(record.job_id)
        if job is None or not job.running or (job.time_left is not None and job.time_left < 30):
            return None
        self.reused = True
        self.log.info("restarting in SLURM job %s (no new job queued)", job.job_id)
        return job

    def _submit_and_wait(self) -> JobStatus:
        script = batch_script(self.steps, self.python)
        job_id = self.scheduler.submit(self.slurm, self.kernel_id, script)
        self.job_id = job_id
        self.log.info("submitted SLURM job %s (%s)", job_id, self.slurm.text or "default sbatch options")
        return self._wait_running(job_id)

    def _wait_running(self, job_id: str) -> JobStatus:
        """Poll squeue until the job runs; a progress line in the log every PROGRESS_EVERY s."""
        t0 = time.monotonic()
        last_line = -PROGRESS_EVERY
        polls = 0
        while True:
            job = self.scheduler.status(job_id)
            waited = time.monotonic() - t0
            if job is not None:
                if job.running and job.nodes:
                    return job
                if job.final:
                    failure = self._batch_failure(job_id, job)
                    if failure is not None:
                        raise failure
                    msg = f"SLURM job {job_id} ended before the kernel started in it ({job.state}, {job.reason})"
                    raise exc.SchedulerError(msg, host=self.host, detail=job.why_ended())
                if waited - last_line >= PROGRESS_EVERY:
                    last_line = waited
                    self.log.info("SLURM job %s %s (reason: %s), waited %.0f s", job_id, job.state,
                                  job.reason or "-", waited)
            if waited > self.slurm.queue_timeout:
                self.scheduler.cancel(job_id)
                msg = (f"SLURM job {job_id} waited {waited:.0f} s in the queue without starting; it is cancelled. "
                       f"Raise --queue-timeout, or pick a partition with free nodes (`sinfo` on the login node)")
                raise exc.QueueTimeoutError(msg, host=self.host)
            polls += 1
            time.sleep(POLL_FIRST if polls < 10 else POLL_LATER)

    def _batch_failure(self, job_id: str, job: Optional[JobStatus] = None) -> Optional[exc.SSHKernelError]:
        """When the job's batch script (the launcher, after --pre-command and the python lookup)
        failed on the node: the error its exit code stands for, as for a login shell; else None."""
        job = job or self.scheduler.settled_status(job_id, wait=5.0)
        if job is None or not job.final:
            return None
        code = self.scheduler.exit_code(job_id)
        if code in (None, 0):
            return None
        error = error_for_exit(code, "", host=self.host, python=self.python, pre_command=self.pre_command)
        error.message = f"{error.message} (SLURM job {job_id}: its batch script on {job.nodes or 'the node'} " \
                        f"exited with code {code})"
        error.args = (error.message,)
        return error

    # -- while it runs --------------------------------------------------------------------------
    def attach(self, transport: Transport, timeout: float) -> KernelInfo:
        try:
            return super().attach(transport, timeout)
        except exc.RemoteError as e:
            job = self.scheduler.settled_status(self.job_id) if self.job_id else None
            if job is not None and not job.running:
                raise exc.KernelGoneError(f"the kernel is gone: {self._forget(job)}", host=self.host) from e
            raise

    def ping(self) -> bool:
        self._warn_time_limit()
        return super().ping()

    def _warn_time_limit(self) -> None:
        if self._warned or self._ends_at is None:
            return
        left = self._ends_at - time.monotonic()
        if left <= WARN_BEFORE:
            self._warned = True
            self.log.warning("SLURM job %s reaches its time limit in %s: the kernel ends then (save your work)",
                             self.job_id, format_duration(max(left, 0)))

    def why_ended(self) -> Optional[str]:
        """After the kernel ended: why, if its job ended for the scheduler's reasons; else None."""
        if not self.job_id:
            return None
        if self._end_reason:
            return self._end_reason  # found out while re-attaching (before we cancelled a requeued job)
        job = self.scheduler.settled_status(self.job_id)
        if job is None or job.running:
            return None
        return self._forget(job)

    def _forget(self, job: JobStatus) -> str:
        """The job no longer holds this kernel: drop its record; a job requeued (preempted, its
        node failed) is cancelled, or it would run again later for nobody. Why, for the log."""
        JobRecord.remove(self.kernel_id)
        if job.waiting:
            self.scheduler.cancel(job.job_id)
        self._end_reason = job.why_ended()
        return self._end_reason

    def stop(self, timeout: float) -> Optional[dict]:  # type: ignore[override]
        exited = super().stop(timeout)
        if self.job_id and not self._kernel_started and not self.reused:
            self.scheduler.cancel(self.job_id)  # queued or starting for nobody: give the nodes back
        return exited
