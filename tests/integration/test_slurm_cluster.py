"""Tests of the SLURM test cluster itself (tests/slurmcluster.py), driven as the feature of issue 17
will drive it: over ssh to the login host as the test user, with SLURM's own commands.

If these fail, the kernel-in-a-job tests are meaningless: they check that jobs run on a compute node
(not the login host), that a job step attached to a running job relays stdin and stdout and sees the
remote env, that the compute hosts are reachable only from the login host, and that cancel, the time
limit, a refused partition and a queued job behave as on a real cluster.
"""
from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import time

import pytest

from nshosts import REMOTE_ENV_PREFIX, ns_pids
from slurmcluster import SlurmCluster
from sshtesthost import host_env
from testutil import wait_until


def _ok(cluster: SlurmCluster, cmd: str, timeout: float = 30) -> str:
    res = cluster.login.run(cmd, timeout=timeout)
    assert res.returncode == 0, f"{cmd!r} on the login host: rc={res.returncode} stderr={res.stderr!r}"
    return res.stdout.strip()


def _submit(cluster: SlurmCluster, options: str) -> str:
    """``sbatch --parsable <options>`` on the login host as the user; the job id."""
    return _ok(cluster, f"sbatch --parsable {options}").split(";")[0]


def test_jobs_run_on_a_compute_node(slurm: SlurmCluster) -> None:
    states = _ok(slurm, "sinfo -h -N -o '%N %t'")  # a line per node and partition
    assert set(states.splitlines()) == {f"{h} idle" for h in slurm.compute_hostnames}
    assert _ok(slurm, "hostname") == slurm.login.hostname

    job = _submit(slurm, "--wrap 'hostname; sleep 1; command -v python3; pwd'")
    assert slurm.wait_job_state(job, {"COMPLETED", "FAILED"}, timeout=20) == "COMPLETED", slurm.logs()
    # The output file is written on the node into the submit dir: the home the nodes share.
    ran_on, python, cwd = _ok(slurm, f"cat slurm-{job}.out").splitlines()
    assert ran_on in slurm.compute_hostnames
    assert ran_on != slurm.login.hostname
    # The job has the login session's environment (PATH: the remote env first) and its files.
    assert (python, cwd) == (f"{REMOTE_ENV_PREFIX}/bin/python3", slurm.login.home)


def test_step_in_running_job_relays_stdin_and_stdout(slurm: SlurmCluster) -> None:
    job = _submit(slurm, "--wrap 'sleep 300'")
    slurm.wait_job_state(job, {"RUNNING"}, timeout=10)
    node = slurm.job(job)["NodeList"]
    python = f"{REMOTE_ENV_PREFIX}/bin/python"
    code = "import socket,sys,ipykernel; print(socket.gethostname()); print(sys.stdin.readline().strip())"
    cmd = f"srun --jobid={job} --overlap {python} -c {shlex.quote(code)}"
    started = time.monotonic()
    res = subprocess.run(slurm.login.ssh_argv(cmd, options=["-o", "BatchMode=yes"]), input="a line for the node\n",
                         capture_output=True, text=True, timeout=30, env=host_env())
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [node, "a line for the node"], res.stderr
    assert node in slurm.compute_hostnames
    print(f"ssh + srun --overlap step: {elapsed:.2f} s")


def test_compute_hosts_only_reachable_from_login_host(slurm: SlurmCluster) -> None:
    for hostname, address in slurm.compute_addresses.items():
        for port in (22, 6818):  # sshd's, slurmd's
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
        # From the login host: slurmd answers, nothing listens on 22.
        probe = "exec 3<>/dev/tcp/{}/{} && echo open"
        assert _ok(slurm, probe.format(address, 6818)) == "open"
        res = slurm.login.run(probe.format(address, 22))
        assert res.returncode != 0 and "refused" in res.stderr.lower(), res
        # And no sshd inside at all.
        namespace = slurm.compute_namespaces[slurm.compute_hostnames.index(hostname)]
        comms = set()
        for pid in ns_pids(namespace):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as fh:
                comms.add(fh.read().strip())
        assert "slurmd" in comms and not any(c.startswith("sshd") for c in comms), comms


def test_scancel_ends_job(slurm: SlurmCluster) -> None:
    job = _submit(slurm, "--wrap 'sleep 300'")
    slurm.wait_job_state(job, {"RUNNING"}, timeout=10)
    wait_until(lambda: slurm.compute_pids(r"^sleep 300"), 10, "the job's sleep on a compute node")
    _ok(slurm, f"scancel {job}")
    started = time.monotonic()
    while _ok(slurm, f"squeue -h -j {job} -o %T"):
        assert time.monotonic() - started < 10, f"job {job} still in squeue"
        time.sleep(0.2)
    print(f"scancel to gone from squeue: {time.monotonic() - started:.2f} s")
    assert slurm.job_state(job) in ("CANCELLED", None)
    assert not slurm.compute_pids(r"^sleep 300")


@pytest.mark.slow
def test_time_limit_ends_job(slurm: SlurmCluster) -> None:
    job = _submit(slurm, "--partition short --time 00:00:05 --wrap 'sleep 300'")
    slurm.wait_job_state(job, {"RUNNING"}, timeout=10)
    # Time limits are whole minutes: 5 s becomes 1 min. The job's end time can be brought forward
    # instead (what the cluster's end_job_in does); slurmctld then ends it at its next look at
    # time limits, which it takes every 30 s.
    assert slurm.job(job)["TimeLimit"] == "00:01:00"
    slurm.end_job_in(job, 3)
    started = time.monotonic()
    assert slurm.wait_job_state(job, {"TIMEOUT", "COMPLETED", "FAILED", None}, timeout=45) == "TIMEOUT"
    print(f"time limit ended the job {time.monotonic() - started:.1f} s after its end time was set to now+3 s")
    assert not _ok(slurm, f"squeue -h -j {job} -o %T")
    wait_until(lambda: not slurm.compute_pids(r"^sleep 300"), 5, "the job's processes gone")


def test_unknown_partition_refused_at_once(slurm: SlurmCluster) -> None:
    started = time.monotonic()
    res = slurm.login.run("sbatch --partition nosuch --wrap true")
    assert time.monotonic() - started < 5
    assert res.returncode != 0
    assert "invalid partition" in res.stderr.lower(), res.stderr


def _pending(slurm: SlurmCluster, job: str) -> tuple[str, str]:
    """State and reason from squeue, once slurmctld has given a reason (on its next pass)."""
    state, reason = "", ""
    deadline = time.monotonic() + 10
    while reason in ("", "None") and time.monotonic() < deadline:
        state, reason = (_ok(slurm, f"squeue -h -j {job} -o '%T %r'").split() + ["", ""])[:2]
        time.sleep(0.2)
    return state, reason


def test_queued_job_pends_until_a_node_frees(slurm: SlurmCluster) -> None:
    holders = [_submit(slurm, "--exclusive --wrap 'sleep 300'") for _ in slurm.compute_hostnames]
    for job in holders:
        slurm.wait_job_state(job, {"RUNNING"}, timeout=10)
    assert {slurm.job(j)["NodeList"] for j in holders} == set(slurm.compute_hostnames)

    queued = _submit(slurm, "--wrap 'sleep 300'")
    state, reason = _pending(slurm, queued)
    assert state == "PENDING" and reason in ("Resources", "Priority"), (state, reason)

    _ok(slurm, f"scancel {holders[0]}")
    started = time.monotonic()
    slurm.wait_job_state(queued, {"RUNNING"}, timeout=30)
    print(f"queued job started {time.monotonic() - started:.2f} s after a holder was cancelled")
    assert slurm.job(queued)["NodeList"] == slurm.job(holders[0])["NodeList"]


def test_nodes_held_by_someone_else(slurm: SlurmCluster) -> None:
    with slurm.nodes_held() as holders:
        assert {slurm.job(j)["UserId"].split("(")[0] for j in holders} == {"root"}
        queued = _submit(slurm, "--wrap 'sleep 300'")
        assert _pending(slurm, queued) == ("PENDING", "Resources")
    slurm.wait_job_state(queued, {"RUNNING"}, timeout=30)


def test_cluster_survives_login_sshd_restart(slurm: SlurmCluster) -> None:
    job = _submit(slurm, "--wrap 'sleep 300'")
    slurm.wait_job_state(job, {"RUNNING"}, timeout=10)
    slurm.login.restart_sshd(drop_connections=True)  # a new mount namespace: /etc/slurm again
    assert _ok(slurm, f"squeue -h -j {job} -o %T") == "RUNNING"
    assert _ok(slurm, f"srun --jobid={job} --overlap hostname") == slurm.job(job)["NodeList"]


def test_detached_processes_die_with_step_and_job(slurm: SlurmCluster) -> None:
    """As on a cgroup cluster: what a step or job starts dies with it, even detached (setsid)."""
    if slurm.proctrack != "proctrack/cgroup":
        pytest.skip(f"{slurm.proctrack}: no cgroup v1 freezer on this machine, detached processes escape")
    job = _submit(slurm, "--wrap '(setsid sleep 1234 &); sleep 300'")
    slurm.wait_job_state(job, {"RUNNING"}, timeout=10)
    step = f"srun --jobid={job} --overlap sh -c '(setsid sleep 2345 </dev/null >/dev/null 2>&1 &); echo started'"
    assert _ok(slurm, step) == "started"
    wait_until(lambda: not slurm.compute_pids(r"^sleep 2345"), 5, "the step's detached sleep gone with the step")
    wait_until(lambda: slurm.compute_pids(r"^sleep 1234"), 5, "the job's detached sleep")
    _ok(slurm, f"scancel {job}")
    wait_until(lambda: not slurm.compute_pids(r"^sleep (1234|300)"), 5, "the job's processes gone with it")


def test_run_on_a_node_and_as_another_user(slurm: SlurmCluster) -> None:
    node = slurm.compute_hostnames[0]
    res = slurm.run_on(node, ["sh", "-c", f'hostname; cd; pwd; {REMOTE_ENV_PREFIX}/bin/python -c "import ipykernel"'])
    assert res.returncode == 0 and res.stdout.split() == [node, slurm.login.home], res
    # Another user of the cluster sees the queue but not into the test user's (shared) home.
    other = slurm.run_on(slurm.login.hostname, ["squeue", "-h"], user="nobody")
    assert other.returncode == 0, other.stderr
    other = slurm.run_on(node, ["ls", slurm.login.home], user="nobody")
    assert other.returncode != 0 and "Permission denied" in other.stderr, other
