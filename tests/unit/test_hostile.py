"""Hostile strings in any option never become a command nobody asked for (property-based).

Every example plants shell syntax that would create a file named MARK if any shell ever parsed
it, runs the real thing (the agent through the remote sh wrapper and loader; ssh itself for
--host), and checks that no MARK appeared and the value arrived exactly.
"""
import json
import os
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ssh_ipykernel.exceptions import HostSpecError
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.session.bundle import agent_stdin
from ssh_ipykernel.session.startcmd import build_remote_command
from ssh_ipykernel.remote import protocol

ATTACKS = ["$(touch MARK)", "`touch MARK`", "';touch MARK;'", '";touch MARK;"', "x;touch MARK", "a\ntouch MARK",
           "|touch MARK", "&& touch MARK", "$(touch${IFS}MARK)", "~/$(touch MARK)", "\\';touch MARK #", "{connection_file};touch MARK"]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=25)
HOSTILE = st.sampled_from(ATTACKS) | TEXT
# A directory name: anything but '/', NUL, '.' and '..' (and not so long the path gets silly).
DIRNAME = (st.sampled_from([a.replace("/", "") for a in ATTACKS]) | TEXT.map(lambda t: t.replace("/", "_"))).filter(
    lambda t: t not in (".", "..") and len(t.encode()) < 100)
ENV_NAME = st.sampled_from(["SIK_X", "$(touch MARK)", "A;touch MARK", "PATH2"]) | st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,8}\Z")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# The "kernel": records how it was started, then exits (the agent then reports it ended).
REPORT = ("import json, os, sys; json.dump({'cwd': os.getcwd(), 'argv': sys.argv[1:], "
          "'env': os.environ.get(os.environ['SIK_NAME'])}, open(os.environ['SIK_OUT'], 'w'))")


def marks(root):
    return [p for p in root.rglob("*MARK*") if p.name == "MARK"]


@pytest.mark.slow  # each example starts the real agent (~0.5 s on an idle machine)
@SETTINGS
@given(workdir=DIRNAME, name=ENV_NAME, value=HOSTILE, arg=HOSTILE)
def test_workdir_env_and_kernel_command_arrive_as_data(tmp_path_factory, workdir, name, value, arg):
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / workdir).mkdir()
    out = tmp / "report.json"
    params = {
        "protocol": protocol.PROTOCOL, "kernel_id": "hostile-1", "key": "k" * 32, "signature_scheme": "hmac-sha256",
        "kernel_name": "", "workdir": str(tmp / workdir),
        "env": {name: value, "SIK_NAME": name, "SIK_OUT": str(out)},
        "kernel_cmd": [sys.executable, "-c", REPORT, "{connection_file}", arg],
    }
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), HOME=str(tmp))
    proc = subprocess.Popen(["/bin/sh", "-c", build_remote_command(sys.executable)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp, env=env)
    proc.stdin.write(agent_stdin(params))
    proc.stdin.flush()
    events = []  # the session stays open until the keeper reports the kernel's end
    for line in iter(proc.stdout.readline, b""):
        events.append(json.loads(line))
        if events[-1]["event"] in ("exited", "error"):
            break
    events = [e for e in events if e["event"] != "log"]
    proc.stdin.close()
    proc.wait(30)
    proc.stderr.close()
    assert not marks(tmp), (workdir, name, value, arg)
    if not ENV_NAME_RE.match(name):
        assert events[0]["event"] == "error" and events[0]["code"] == "bad_params", events
        assert not out.exists()
        return
    assert [e["event"] for e in events] == ["ready", "exited"], events
    report = json.loads(out.read_text())
    assert report["cwd"] == str(tmp / workdir)
    assert report["env"] == value
    connection_file = report["argv"][0]
    assert connection_file.startswith(str(tmp / "runtime")) and connection_file.endswith(".json")
    assert report["argv"][1] == arg.replace("{connection_file}", connection_file)  # the one field we fill in
    # What stays is the (empty) lock file under which kernels pick their ports.
    left = [n for n in os.listdir(tmp / "runtime") if n != ".kernel-ssh-ports.lock"]
    assert not left, "the agent removes its files when the kernel ends"


@pytest.fixture(scope="module")
def proxy_command_config(tmp_path_factory):
    """An ssh config whose ProxyCommand, run by ssh through a shell, expands %h, %r and %p."""
    d = tmp_path_factory.mktemp("sshcfg")
    config = d / "config"
    config.write_text("Host *\n  ProxyCommand true %h %r %p\n  BatchMode yes\n  StrictHostKeyChecking yes\n"
                      f"  UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n")
    return str(config)


def old_ssh_proxy_command(host: str, user: str, port: int, cwd) -> None:  # noqa: ANN001
    """What OpenSSH < 9.6 did with ``ProxyCommand true %h %r %p``: substitute the tokens as text
    and run the result with ``sh -c`` (CVE-2023-51385). Newer ssh refuses odd names itself."""
    subprocess.run(["/bin/sh", "-c", f"exec true {host} {user} {port}"], cwd=cwd, capture_output=True, timeout=30)


def test_the_old_ssh_harness_does_catch_an_injection(tmp_path):
    old_ssh_proxy_command("x$(touch MARK)", "u", 22, tmp_path)
    assert marks(tmp_path), "the harness must be able to see an injection"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=HOSTILE | st.builds(lambda u, h: f"{u}@{h}", HOSTILE, HOSTILE) | st.builds(lambda h: f"ssh://{h}:22", HOSTILE))
def test_hostile_hosts_are_refused_or_harmless_to_ssh(tmp_path_factory, proxy_command_config, spec):
    """Either --host is refused, or what we give ssh cannot smuggle a command into %h/%r, not
    even through an ssh that does not check them."""
    try:
        host = parse_host(spec)
    except HostSpecError:
        return
    tmp = tmp_path_factory.mktemp("host")
    assert not host.host.startswith("-")
    old_ssh_proxy_command(host.host, host.user or "", host.port or 22, tmp)
    argv = ["ssh", "-F", proxy_command_config, *host.ssh_args(), "--", host.host, "true"]
    subprocess.run(argv, cwd=tmp, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert not marks(tmp), spec
