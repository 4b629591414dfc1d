"""Kernels in SLURM jobs (--slurm, issue 17) on the real test cluster (tests/slurmcluster.py), driven as
Jupyter drives them: manage -> kernelspec -> jupyter_client's KernelManager.

The SSH host is the cluster's login host; the compute hosts have no sshd and are not reachable from
here: whatever the kernel does, it does through the scheduler's job steps.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from kernels import Kernel, iopub_back_after, manage, shutdown_all
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
    shutdown_all(made)


def job_ids(slurm: SlurmCluster) -> List[str]:
    """The jobs in the queue (any state squeue shows by default)."""
    out = slurm.login.run("squeue -h -o %i").stdout
    return out.split()


def test_start_execute_shutdown_in_a_job(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    took = k.start(timeout=90)
    assert k.value(HOSTNAME) in slurm.compute_hostnames, k.log()
    assert k.value("6 * 7") == "42"
    assert k.value("__import__('os').getcwd()") == slurm.login.home  # as in a login shell (no --workdir)
    jobs = job_ids(slurm)
    assert len(jobs) == 1, jobs
    assert f"SLURM job {jobs[0]} running on" in k.log()
    print(f"start in a job took {took:.2f} s")
    status = subprocess.run([sys.executable, "-c", "from ssh_ipykernel.cli import main; main()", "status"],
                            capture_output=True, text=True, timeout=30)
    node = k.value(HOSTNAME)
    assert f"SLURM job {jobs[0]} RUNNING on {node}" in status.stdout, status.stdout + status.stderr
    proc = k.proxy
    k.shutdown()
    assert proc.wait(20) == 0, k.log()
    # The job ends by itself a few seconds after its last kernel (a restart would reuse it).
    wait_until(lambda: not job_ids(slurm), timeout=40, what="the job to leave the queue")
    # Nothing of it is left on the node: the job's directory (runtime files, sockets) is gone.
    left = slurm.run_on(node, ["ls", "-a", "/tmp"], user="root").stdout.split()
    assert f"sik-{slurm.login.pw.pw_uid}-{jobs[0]}" not in left, left


def the_job(slurm: SlurmCluster) -> str:
    jobs = job_ids(slurm)
    assert len(jobs) == 1, jobs
    return jobs[0]


def test_restart_stays_in_the_same_job(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    k.start(timeout=90)
    k.execute("x = 1")
    job, pid = the_job(slurm), int(k.value(PID))
    t0 = time.monotonic()
    k.km.restart_kernel()
    k.kc.wait_for_ready(timeout=60)
    took = time.monotonic() - t0
    iopub_back_after(k, time.monotonic())
    print(f"restart in the same job took {took:.2f} s")
    assert k.value("'x' in dir()") == "False"
    assert int(k.value(PID)) != pid
    assert the_job(slurm) == job, k.log()
    assert f"restarting in SLURM job {job} (no new job queued)" in k.log()
    assert slurm.squeue(job, fmt="%j")[0][0].startswith("sik-"), "the job's name changed"
    on_nodes = slurm.compute_pids(r".")
    assert int(k.value(PID)) in on_nodes and pid not in on_nodes, "the new kernel runs on a node, the old one is gone"


def test_interrupt_keeps_the_kernel(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    k.start(timeout=90)
    k.execute("x = 42; import time")
    pid = k.value(PID)
    msg_id = k.kc.execute("print('sleeping', flush=True); time.sleep(60)")
    k.wait_busy(msg_id)
    time.sleep(1.0)
    k.interrupt_cell(msg_id)
    assert k.value("x") == "42" and k.value(PID) == pid


def test_a_refused_partition_fails_at_once_with_the_schedulers_message(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel("--partition nosuch --time 5")
    t0 = time.monotonic()
    k.launch()
    code = k.proxy.wait(30)
    assert code == 50, k.log()
    assert time.monotonic() - t0 < 15
    assert "invalid partition" in k.log().lower(), k.log()
    assert not job_ids(slurm)


def test_a_queued_start_reports_progress_then_runs(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    with slurm.nodes_held() as holders:
        t0 = time.monotonic()
        k.launch()
        wait_until(lambda: len(re.findall(r"PENDING \(reason: (?:Resources|Priority)\), waited \d+ s", k.log())) >= 2,
                   timeout=30, what="two queue progress lines")
        waited = time.monotonic() - t0
        slurm.admin("scancel", holders[0])
        k.wait_ready(timeout=90)
        print(f"queued start: progress for {waited:.1f} s, ready {time.monotonic() - t0:.1f} s after launch")
        assert k.value(HOSTNAME) in slurm.compute_hostnames


def test_scancel_from_outside_ends_the_proxy_and_says_why(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    k.start(timeout=90)
    job = the_job(slurm)
    proc = k.proxy
    slurm.admin("scancel", job)
    assert proc.wait(60) != 0, k.log()
    assert f"SLURM job {job} is CANCELLED" in k.log(), k.log()


@pytest.mark.slow
def test_the_time_limit_ends_the_proxy_with_a_warning_first(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel("--partition short")
    k.start(timeout=90)
    job = the_job(slurm)
    assert f"SLURM job {job} reaches its time limit in" in k.log(), k.log()
    proc = k.proxy
    slurm.end_job_in(job, 2)
    assert proc.wait(75) != 0, k.log()
    assert f"SLURM job {job} is TIMEOUT" in k.log() and "time limit was reached" in k.log(), k.log()


@pytest.mark.slow
def test_a_20_s_cut_keeps_the_kernel_and_its_output(slurm: SlurmCluster, slurm_kernel) -> None:
    from kernels import Cell, cell_through_cut, printing_cell

    k = slurm_kernel()
    k.start(timeout=90)
    k.execute("x = 'kept'")
    pid, job = k.value(PID), the_job(slurm)
    cell = Cell(k.kc, printing_cell(30, 1.0))
    cell_through_cut(cell, slurm.login, after_lines=3, seconds=20, log=k.log, timeout=90)
    # Printed on the node during the cut, delivered after it through a new srun step: all, once, in order.
    assert cell.numbers() == list(range(30)), cell.summary()
    assert cell.reply is not None and cell.reply["status"] == "ok"
    assert "up: reconnected" in k.log(), k.log()
    assert k.value("x", timeout=60) == "kept", k.log()
    assert k.value(PID) == pid and the_job(slurm) == job


def test_another_user_cannot_reach_the_kernel(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    k.start(timeout=90)
    job = the_job(slurm)
    node = k.value(HOSTNAME)
    uid = slurm.login.pw.pw_uid
    job_dir = f"/tmp/sik-{uid}-{job}"
    conn = k.value("__import__('ipykernel.connect', fromlist=['_']).get_connection_file()")
    runtime = conn.rsplit("/", 1)[0]
    assert runtime.startswith(job_dir), runtime
    for path in (job_dir, runtime):
        res = slurm.run_on(node, ["ls", path], user="nobody")
        assert res.returncode != 0 and "Permission denied" in res.stderr, (path, res)
    # Another user on the login host cannot put a step into the kernel's job (the only way in).
    res = slurm.run_on(slurm.login.hostname, ["srun", f"--jobid={job}", "--overlap", "true"], user="nobody")
    assert res.returncode != 0 and "permission denied" in res.stderr.lower(), res
    key = k.km.session.key.decode()
    for host in (slurm.login.hostname, node):
        res = slurm.run_on(host, ["sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"], user="root")
        assert key not in res.stdout, f"the key is on a command line on {host}"
    # Nothing of the kernel listens on the login host: no TCP port, no unix socket of ours.
    res = slurm.run_on(slurm.login.hostname, ["ss", "-lnxtH"], user="root")
    assert res.returncode == 0, res
    assert not [line for line in res.stdout.splitlines() if "kernel-ssh-" in line or f"sik-{uid}-" in line], res.stdout
    # On the node the kernel's channels are unix sockets in the job's 0700 dir, no TCP port (ipykernel's
    # one TCP socket is the PULL pipe of its forked subprocesses' output, as on any host).
    pid = int(k.value(PID))
    pipe = int(k.value("getattr(getattr(__import__('sys').stdout, 'pub_thread', None), '_pipe_port', 0) or 0"))
    res = slurm.run_on(node, ["ss", "-lntpH"], user="root")
    listening = [line for line in res.stdout.splitlines() if f"pid={pid}," in line]
    assert {int(line.split()[3].rsplit(":", 1)[1]) for line in listening} <= {pipe}, listening
    assert sorted(slurm.run_on(node, ["ls", runtime], user="root").stdout.split()) != []


def test_an_sshd_restart_on_the_login_node_keeps_the_kernel(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    k.start(timeout=90)
    k.execute("x = 'kept'")
    pid, job = k.value(PID), the_job(slurm)
    offset = len(k.log())
    slurm.login.restart_sshd(drop_connections=True)
    wait_until(lambda: "up: reconnected" in k.log()[offset:], timeout=60, what="the proxy to reconnect")
    assert k.value("x", timeout=60) == "kept", k.log()
    assert k.value(PID) == pid and the_job(slurm) == job


@pytest.mark.slow
def test_kill_9_of_the_proxy_leaves_the_job_to_end_after_the_grace_period(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel("--partition debug", "--grace", "8")
    k.start(timeout=90)
    job = the_job(slurm)
    proc = k.proxy
    proc.kill()
    proc.wait(10)
    time.sleep(4)
    assert the_job(slurm) == job, "the job ended before the grace period"
    kernel_pid = int(k.log().split("kernel pid ")[1].split()[0])
    assert kernel_pid in slurm.compute_pids(r"."), "the kernel ended before the grace period"
    took = wait_until(lambda: not job_ids(slurm), timeout=90, what="the job to end after the grace period")
    print(f"job gone {4 + took:.1f} s after kill -9 (grace 8 s)")
    assert kernel_pid not in slurm.compute_pids(r".")


def test_a_start_given_up_while_queued_cancels_the_job(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    with slurm.nodes_held() as holders:
        k.launch()
        wait_until(lambda: "PENDING (reason: Resources)" in k.log(), timeout=30, what="a queue progress line")
        ours = [job for job in job_ids(slurm) if job not in holders]
        assert len(ours) == 1, job_ids(slurm)
        k.proxy.terminate()  # Jupyter gives up on the start (or the user closes the notebook)
        k.proxy.wait(20)
        wait_until(lambda: ours[0] not in job_ids(slurm), timeout=20, what="the queued job to be cancelled")


def test_a_job_queued_past_the_queue_timeout_fails_and_is_cancelled(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel("--partition debug", "--queue-timeout", "3")
    with slurm.nodes_held() as holders:
        t0 = time.monotonic()
        k.launch()
        assert k.proxy.wait(30) == 51, k.log()
        assert time.monotonic() - t0 < 20
        assert "in the queue without starting; it is cancelled" in k.log(), k.log()
        assert sorted(job_ids(slurm)) == sorted(holders), "the timed-out job is still queued"


def _check(slurm: SlurmCluster, options: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "ssh_ipykernel.manage", "check", "--ssh-config",
                           str(slurm.login.ssh_config), "--host", slurm.login.alias, "--python", REMOTE_ENV_PREFIX,
                           f"--slurm={options}"], capture_output=True, text=True, timeout=120)


def test_manage_check_asks_the_scheduler_and_starts_a_kernel_in_a_job(slurm: SlurmCluster) -> None:
    r = _check(slurm, "--partition debug")
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(line for line in r.stdout.splitlines() if "scheduler" in line)
    assert "sbatch --test-only: would start at" in line and "in partition debug" in line, r.stdout
    assert any(node in line for node in slurm.compute_hostnames), line
    r = _check(slurm, "--partition nosuch")
    assert r.returncode == 50, r.stdout + r.stderr
    assert "invalid partition" in r.stdout.lower(), r.stdout


@pytest.mark.parametrize("extra, code, words", [
    (("--python", "/nonexistent/env"), 31, "remote python /nonexistent/env not found"),
    (("--pre-command", "false"), 37, "the --pre-command failed"),
])
def test_a_batch_script_that_fails_on_the_node_says_what_failed(slurm: SlurmCluster, tmp_path: Path, extra, code,
                                                                 words) -> None:
    from kernels import connection_file

    conn = connection_file(tmp_path)
    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel", "--ssh-config", str(slurm.login.ssh_config),
                        "--host", slurm.login.alias, "--python", REMOTE_ENV_PREFIX, *extra, "--slurm=-p debug",
                        "-f", str(conn)], capture_output=True, text=True, timeout=90)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and "its batch script on" in r.stderr, r.stderr
    assert not job_ids(slurm)


def test_a_two_node_job_runs_the_kernel_on_its_batch_host(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel("--partition debug --nodes 2")
    k.start(timeout=90)
    job = the_job(slurm)
    batch_host = slurm.job(job)["BatchHost"]
    assert k.value(HOSTNAME) == batch_host
    k.km.restart_kernel()
    k.kc.wait_for_ready(timeout=60)
    iopub_back_after(k, time.monotonic())
    assert k.value(HOSTNAME) == batch_host and the_job(slurm) == job


def test_a_hard_restart_stays_in_the_job_and_retires_the_old_kernel(slurm: SlurmCluster, slurm_kernel) -> None:
    k = slurm_kernel()
    k.start(timeout=90)
    job, pid = the_job(slurm), int(k.value(PID))
    k.km.restart_kernel(now=True)  # the proxy is killed with SIGKILL: its kernel is left to the keeper
    k.kc.wait_for_ready(timeout=60)
    iopub_back_after(k, time.monotonic())
    assert int(k.value(PID)) != pid and the_job(slurm) == job, k.log()
    wait_until(lambda: pid not in slurm.compute_pids(r"."), timeout=20, what="the old kernel to be retired")


def test_a_requeued_job_ends_the_proxy_and_is_cancelled(slurm: SlurmCluster, slurm_kernel) -> None:
    """As after a preemption with requeue: the kernel is gone, the job would run again for nobody."""
    k = slurm_kernel()
    k.start(timeout=90)
    job = the_job(slurm)
    proc = k.proxy
    slurm.admin("scontrol", "requeue", job)
    assert proc.wait(60) != 0, k.log()
    assert f"SLURM job {job} is" in k.log() and "requeued" in k.log(), k.log()
    wait_until(lambda: not job_ids(slurm), timeout=30, what="the requeued job to be cancelled")
