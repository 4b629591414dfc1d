"""SlurmKernel's decisions (session/slurmkernel.py) with a scripted scheduler and a fake clock: queue
progress lines, the queue timeout, a job that ends while queued, why a job ended, the time-limit
warning, and the reuse of a running job on restart."""
import logging

import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel import slurm
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.session import slurmkernel
from ssh_ipykernel.session.slurmkernel import SlurmKernel


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Scheduler:
    """squeue answers in turn (the last one repeats); what was cancelled."""

    def __init__(self, *states):
        self.states = list(states)
        self.cancelled = []

    def status(self, job_id):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return slurm.parse_squeue(f"{job_id}|{state}", job_id) if state else None

    settled_status = status

    def cancel(self, job_id):
        self.cancelled.append(job_id)
        return True

    def exit_code(self, job_id):
        return 0


class Transport:
    host = parse_host("login")


@pytest.fixture
def make(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(slurmkernel, "time", clock)
    monkeypatch.setattr(slurm.JobRecord, "path", staticmethod(lambda kid, d=None: str(tmp_path / f"slurm-{kid}.json")))
    monkeypatch.setattr(slurmkernel, "prune_records", lambda: None)

    def build(scheduler, queue_timeout=3600.0):
        kernel = SlurmKernel(Transport(), slurm=slurm.parse_slurm_options("-p debug", queue_timeout),
                             log_to=logging.getLogger("test.slurm"), kernel_id="kid", key="k", signature_scheme="s")
        monkeypatch.setattr(SlurmKernel, "scheduler", property(lambda self: scheduler))
        return kernel, clock

    return build


def test_queue_progress_every_few_seconds_then_running(make, caplog):
    kernel, clock = make(Scheduler(*["PENDING|Priority|||||"] * 30, "RUNNING|None|n1|59:00|1:00|1:00:00|n1"))
    with caplog.at_level(logging.INFO, logger="test.slurm"):
        job = kernel._wait_running("5")
    assert job.running and job.nodes == "n1" and job.batch_host == "n1"
    lines = [r.getMessage() for r in caplog.records if "PENDING" in r.getMessage()]
    assert lines[0] == "SLURM job 5 PENDING (reason: Priority), waited 0 s" and len(lines) >= 4, lines
    waited = [int(line.split("waited ")[1].split()[0]) for line in lines]
    assert all(5 <= b - a <= 7 for a, b in zip(waited, waited[1:])), waited


def test_the_queue_timeout_cancels_the_job(make):
    scheduler = Scheduler("PENDING|Resources|||||")
    kernel, clock = make(scheduler, queue_timeout=30)
    with pytest.raises(exc.QueueTimeoutError, match="--queue-timeout") as e:
        kernel._wait_running("5")
    assert e.value.exit_code == 51 and scheduler.cancelled == ["5"]
    assert 30 < clock.now - 1000.0 < 35


def test_a_job_that_ends_while_queued_fails_with_the_schedulers_reason(make):
    kernel, _ = make(Scheduler("PENDING|Priority|||||", "CANCELLED|None|||||"))
    with pytest.raises(exc.SchedulerError, match="ended before the kernel started") as e:
        kernel._wait_running("5")
    assert "CANCELLED" in e.value.detail and e.value.exit_code == 50


def test_why_ended_only_for_a_job_the_scheduler_ended(make):
    kernel, _ = make(Scheduler("RUNNING|None|n1|59:00|1:00|1:00:00|n1"))
    kernel.job_id = "5"
    assert kernel.why_ended() is None  # a shutdown: the job runs on for a restart
    scheduler = Scheduler("TIMEOUT|TimeLimit|n1|0:00|1:00:00|1:00:00|n1")
    kernel, _ = make(scheduler)
    kernel.job_id = "5"
    assert kernel.why_ended() == "SLURM job 5 is TIMEOUT, reason TimeLimit: its time limit was reached"
    scheduler = Scheduler("PENDING|BeginTime|||||")
    kernel, _ = make(scheduler)
    kernel.job_id = "5"
    assert "requeued" in kernel.why_ended() and scheduler.cancelled == ["5"]


def test_a_warning_once_before_the_time_limit(make, caplog):
    kernel, clock = make(Scheduler("RUNNING|None|n1|59:00|1:00|1:00:00|n1"))
    kernel.job_id, kernel._ends_at = "5", clock.now + 600
    with caplog.at_level(logging.INFO, logger="test.slurm"):
        kernel._warn_time_limit()
        assert not caplog.records
        clock.now += 301
        kernel._warn_time_limit()
        kernel._warn_time_limit()
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["SLURM job 5 reaches its time limit in 4:59: the kernel ends then (save your work)"]


def test_a_restart_reuses_the_running_job_of_the_same_kernel_only(make):
    kernel, _ = make(Scheduler("RUNNING|None|n1|59:00|1:00|1:00:00|n1"))
    assert kernel._reusable_job() is None  # no record yet
    slurm.JobRecord(job_id="5", host="login", options="-p debug").save("kid")
    job = kernel._reusable_job()
    assert job is not None and job.job_id == "5" and kernel.reused
    slurm.JobRecord(job_id="5", host="login", options="-p other").save("kid")
    kernel, _ = make(Scheduler("RUNNING|None|n1|59:00|1:00|1:00:00|n1"))
    assert kernel._reusable_job() is None  # other options: another job
    slurm.JobRecord(job_id="5", host="login", options="-p debug").save("kid")
    kernel, _ = make(Scheduler("RUNNING|None|n1|0:20|1:00|1:00:00|n1"))
    assert kernel._reusable_job() is None  # too little time left
