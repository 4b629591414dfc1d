"""Kernels in SLURM jobs (--slurm, issue 17) on the real test cluster (tests/slurmcluster.py), driven as
Jupyter drives them: manage -> kernelspec -> jupyter_client's KernelManager.

The SSH host is the cluster's login host; the compute hosts have no sshd and are not reachable from
here: whatever the kernel does, it does through the scheduler's job steps.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from kernels import Kernel, manage
from nshosts import REMOTE_ENV_PREFIX
from slurmcluster import SlurmCluster
from testutil import wait_until

HOSTNAME = "__import__('socket').gethostname()"
PID = "__import__('os').getpid()"


@pytest.fixture
def slurm_kernel(slurm: SlurmCluster, jupyter_env, tmp_path: Path) -> Iterator[Callable[..., Kernel]]:
    """Factory: ``manage add --host slogin --slurm OPTIONS`` and a KernelManager on it (not started)."""
    made: List[Kernel] = []

    def make(options: str = "--partition debug", *extra: str, name: str = "ssh_slogin") -> Kernel:
        prefix = tmp_path / f"prefix{len(made)}"
        manage(slurm.login, prefix, "--host", slurm.login.alias, "--python", REMOTE_ENV_PREFIX,
               f"--slurm={options}", *extra)
        k = Kernel(prefix, name, tmp_path / f"proxy-{len(made)}.log")
        made.append(k)
        return k

    yield make
    for k in made:
        try:
            k.shutdown()
        except Exception:  # noqa: BLE001 - the test itself reports the failure
            pass


def job_ids(slurm: SlurmCluster) -> List[str]:
    """The jobs in the queue (any state squeue shows by default)."""
    out = slurm.login.run("squeue -h -o %i").stdout
    return out.split()


def test_start_execute_shutdown_in_a_job(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    took = k.start(timeout=90)
    assert k.value(HOSTNAME) in slurm.compute_hostnames, k.log()
    assert k.value("6 * 7") == "42"
    jobs = job_ids(slurm)
    assert len(jobs) == 1, jobs
    assert f"SLURM job {jobs[0]} running on" in k.log()
    print(f"start in a job took {took:.2f} s")
    proc = k.proxy
    k.shutdown()
    assert proc.wait(20) == 0, k.log()
    # The job ends by itself a few seconds after its last kernel (a restart would reuse it).
    wait_until(lambda: not job_ids(slurm), timeout=40, what="the job to leave the queue")
