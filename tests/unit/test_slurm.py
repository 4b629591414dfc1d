"""The pure parts of --slurm: option splitting, the scheduler's output read into values, the command
texts (every user word one quoted word), the job record, and the node-side module's stdlib-only rule."""
import ast
import shlex
import time
import subprocess

import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel import options as o
from ssh_ipykernel import slurm
from ssh_ipykernel.remote import slurmnode
from ssh_ipykernel.session.startcmd import PreCommand
from ssh_ipykernel.status import slurm_text, table_rows


def test_options_are_split_like_a_shell_but_never_run():
    opts = slurm.parse_slurm_options("--partition gpu --time 2:00:00 --comment 'a b; rm -rf ~' -A \"$HOME\"")
    assert opts.args == ("--partition", "gpu", "--time", "2:00:00", "--comment", "a b; rm -rf ~", "-A", "$HOME")


@pytest.mark.parametrize("text, words", [
    ("--wrap 'hostname'", "--wrap"), ("--array=1-3", "--array"), ("--parsable", "--parsable"),
    ("gpu --time 1", "does not start with an option"), ("--comment 'x", "quotes"), ("-p a\n-t 1", "line break"),
])
def test_bad_options_are_refused_with_what_to_do(text, words):
    with pytest.raises(exc.UsageError, match=words):
        slurm.parse_slurm_options(text)


def test_sbatch_command_gives_each_word_to_sbatch_as_it_was_split():
    opts = slurm.parse_slurm_options("--comment 'a b; $(touch x)' -p debug")
    command = slurm.sbatch_command(opts, "abc")
    words = shlex.split(command)
    assert words == ["sbatch", "--job-name=sik-abc", "--output=/dev/null", "--error=/dev/null",
                     "--comment", "a b; $(touch x)", "-p", "debug", "--parsable"]
    assert slurm.sbatch_command(opts, "abc", test_only=True).endswith("'--test-only'")
    # Through a real sh: echo stands in for sbatch, nothing is expanded or run.
    out = subprocess.run(["sh", "-c", "sbatch() { printf '%s\\n' \"$@\"; }; " + command], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == words[1:]


@pytest.mark.parametrize("text, seconds", [
    ("0:59", 59), ("1:00:00", 3600), ("2-03:04:05", 183845), ("5", 300), ("1-2", 93600), ("1-02:03", 93780),
    ("UNLIMITED", None), ("INVALID", None), ("NOT_SET", None), ("", None),
])
def test_durations(text, seconds):
    assert slurm.parse_duration(text) == seconds


def test_squeue_line():
    job = slurm.parse_squeue("12|PENDING|Resources|(Resources)|1:00:00|0:00|1:00:00|n/a\n", "12")
    assert (job.state, job.reason, job.waiting, job.running, job.final) == ("PENDING", "Resources", True, False, False)
    job = slurm.parse_squeue("12|RUNNING|None|node[1-2]|59:30|0:30|1:00:00|node1\n", "12")
    assert job.running and job.nodes == "node[1-2]" and job.batch_host == "node1" and job.time_left == 3570 and job.time_limit == 3600
    gone = slurm.parse_squeue("", "12")
    assert gone.state == "GONE" and gone.final
    timeout = slurm.parse_squeue("12|TIMEOUT|TimeLimit|node1|0:00|1:00|1:00|node1\n", "12")
    assert timeout.final and "time limit was reached" in timeout.why_ended() and "TimeLimit" in timeout.why_ended()
    assert "cancelled (scancel)" in slurm.parse_squeue("12|CANCELLED|None|n|0:00|1:00|1:00|n", "12").why_ended()


def test_sbatch_output_and_refusals():
    assert slurm.parse_sbatch("42\n") == "42"
    assert slurm.parse_sbatch("42;cluster\n") == "42"
    assert slurm.parse_sbatch("") == ""
    err = "sbatch: error: invalid partition specified: nosuch\nsbatch: error: Batch job submission failed: Invalid partition name specified\n"
    assert slurm.scheduler_message(err).splitlines() == err.strip().splitlines()
    found = slurm.parse_test_only("sbatch: Job 5 to start at 2026-12-02T13:00:00 using 1 processors on nodes n1 in partition debug\n")
    assert found == {"start": "2026-12-02T13:00:00", "processors": "1", "nodes": "n1", "partition": "debug"}


def test_a_refusal_is_a_scheduler_error_with_its_own_exit_code():
    class Proc:
        returncode = 1

        def communicate(self, data, timeout=None):
            return b"", b"sbatch: error: invalid partition specified: nosuch\n"

    class Transport:
        def start_command(self, command):
            return Proc()

    with pytest.raises(exc.SchedulerError) as e:
        slurm.Scheduler(Transport(), host="login").submit(slurm.parse_slurm_options("-p nosuch"), "k", "#!/bin/sh\n")
    assert e.value.exit_code == 50 and "invalid partition" in str(e.value)
    assert exc.QueueTimeoutError.exit_code == 51


def test_srun_runs_the_login_shell_text_in_the_job_and_spawns_through_the_launcher():
    plain = slurm.Srun("7", [PreCommand("module load x")], node="n1").build("/env")
    words = shlex.split(plain)
    assert words[:3] == ["exec", "srun", "--jobid=7"] and "--overlap" in words and "--unbuffered" in words
    assert "--nodelist=n1" in words
    assert words[-3:-1] == ["/bin/sh", "-c"] and "module load x" in words[-1]
    spawned = shlex.split(slurm.Srun("7", spawn=True).build(None))[-1]
    assert "spawn_main(" in spawned and "launcher_main()" not in spawned.split("spawn_main(")[1]
    script = slurm.batch_script([PreCommand("module load x")], "/env")
    assert script.startswith("#!/bin/sh\n") and "launcher_main()" in script and "module load x" in script


def test_the_node_module_is_stdlib_only_and_compiles_as_a_program():
    source = slurm.node_source()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not node.level and not (node.module or "").startswith("ssh_ipykernel")
    compile(slurm.program(source, "launcher_main()"), "x", "exec")
    assert slurmnode.job_dir("5").startswith("/tmp/sik-")


def test_the_job_record_is_private_and_read_back(tmp_path):
    slurm.JobRecord(job_id="9", host="login", options="-p debug").save("kid", str(tmp_path))
    path = tmp_path / "slurm-kid.json"
    assert path.stat().st_mode & 0o777 == 0o600
    back = slurm.JobRecord.load("kid", str(tmp_path))
    assert back is not None and (back.job_id, back.host, back.options) == ("9", "login", "-p debug")
    assert [k for k, _ in slurm.read_records(str(tmp_path))] == ["kid"]
    slurm.JobRecord.remove("kid", str(tmp_path))
    assert slurm.JobRecord.load("kid", str(tmp_path)) is None


def test_slurm_options_in_the_model():
    opts = o.ProxyOptions.from_params({"host": "login", "slurm": "-p debug --time 5", "queue_timeout": "10m"})
    assert opts.slurm is not None and opts.slurm.args == ("-p", "debug", "--time", "5")
    assert opts.slurm.queue_timeout == 600
    assert "--slurm=-p debug --time 5" in opts.argv() and opts.argv()[-4:-2] == ["--queue-timeout", "10m"]
    with pytest.raises(exc.UsageError, match="--sudo and --slurm"):
        o.ProxyOptions.from_params({"host": "login", "slurm": "-p debug", "sudo": True})
    with pytest.raises(exc.UsageError, match="only applies with --slurm"):
        o.ProxyOptions.from_params({"host": "login", "queue_timeout": "10m"})
    with pytest.raises(exc.UsageError, match="--queue-timeout"):
        o.ProxyOptions.from_params({"host": "login", "slurm": "-p x", "queue_timeout": "soon"})


def test_status_shows_job_node_and_time_left():
    k = {"host": "login", "kernel_id": "k", "slurm_job": "12", "slurm_node": "node1", "slurm_ends": 1000.0 + 3300,
         "remote_hostname": "node1", "state": "up", "pid": 1, "uptime": 5}
    assert slurm_text(k, now=1000.0) == "SLURM job 12 RUNNING on node1, 55 min left"
    assert table_rows([k])[0][0].startswith("login (SLURM job 12 RUNNING on node1, ")


def test_old_job_records_are_pruned(tmp_path):
    import os

    slurm.JobRecord(job_id="1", host="h", options="").save("old", str(tmp_path))
    slurm.JobRecord(job_id="2", host="h", options="").save("new", str(tmp_path))
    old = tmp_path / "slurm-old.json"
    os.utime(old, (1000.0, 1000.0))
    slurm.prune_records(str(tmp_path), now=1000.0 + slurm.RECORD_MAX_AGE + 1)
    assert [k for k, _ in slurm.read_records(str(tmp_path))] == ["new"]


def test_the_launcher_runs_a_steps_command_on_the_steps_stdio_and_ends_when_idle(tmp_path):
    """remote/slurmnode.py on this machine, as in a job: the launcher (short waits), a step's spawn
    whose command reads the step's stdin and writes its stdout; its exit code is the step's; a
    command's own detached child keeps the launcher (and so the job) until it ends."""
    import os
    import sys
    import time

    job = f"t{os.getpid()}"
    env = {**os.environ, "SLURM_JOB_ID": job}
    source = slurm.node_source() + "\nFIRST_WAIT = 5.0\nLINGER = 1.0\n"
    launcher = subprocess.Popen([sys.executable, "-c", slurm.program(source, "launcher_main()")], env=env, cwd=tmp_path)
    try:
        spawn = slurm.program(source, "spawn_main('cat; pwd; (sleep 2 &) ; exit 7', 5.0)")
        t0 = time.monotonic()
        step = subprocess.run([sys.executable, "-c", spawn], input=b"\x00bytes\xff\n", capture_output=True,
                              env=env, timeout=20)
        assert step.returncode == 7, step.stderr
        assert step.stdout == b"\x00bytes\xff\n" + str(tmp_path).encode() + b"\n"  # the job's working dir
        assert launcher.poll() is None, "ended while the detached child still ran"
        assert launcher.wait(15) == 0
        assert time.monotonic() - t0 > 2.0  # the sleep, then the linger
        assert not os.path.exists(slurmnode.job_dir(job))
    finally:
        launcher.kill()
    # No launcher: the step says so, with its own exit code, at once.
    step = subprocess.run([sys.executable, "-c", slurm.program(slurm.node_source(), "spawn_main('true')")],
                          capture_output=True, env=env, timeout=20)
    assert step.returncode == slurmnode.EXIT_NO_LAUNCHER and b"no kernel launcher" in step.stderr


def test_a_warm_pool_adopted_by_the_launcher_does_not_hold_the_job():
    """A process showing the warm pool's title (as launch.show_command_line writes it) is no kernel
    for the launcher; anything else is."""
    from ssh_ipykernel.remote import warm

    assert slurmnode.WARM_POOL_TITLE == warm.TITLE
    pool = subprocess.Popen(["ssh_ipykernel-warm-pool", "30"], executable="sleep")
    other = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while not slurmnode._is_warm_pool(pool.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slurmnode._is_warm_pool(pool.pid)
        assert not slurmnode._is_warm_pool(other.pid)
    finally:
        for proc in (pool, other):
            proc.kill()
            proc.wait()
