"""The launch tweaks a cold and a warm kernel share (remote/launch.py): the IOPub queue and the
command line shown. Its two users are checked to use them in test_kernelcmd.py (the cold
launcher) and test_warm.py (the warm pool)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


from ssh_ipykernel.remote import launch

ROOT = str(Path(launch.__file__).resolve().parents[2])


#: Shows ``sys.argv[1:]`` as its command line (a long last word is refused: the area cannot grow),
#: says what it did, and waits for stdin to close.
SHOW = """
import json, sys
sys.path.insert(0, %r)
from ssh_ipykernel.remote import launch
wanted = json.loads(sys.argv[1])
too_long = launch.show_command_line(["x" * 100000])
shown = launch.show_command_line(wanted)
print(json.dumps([too_long, shown, getattr(sys, "orig_argv", wanted)]), flush=True)
sys.stdin.read()
""" % ROOT


def test_the_command_line_is_rewritten_in_place_for_ps_and_pgrep():
    import json

    wanted = [sys.executable, "-m", "ipykernel_launcher", "-f", "/tmp/kernel été.json"]
    proc = subprocess.Popen([sys.executable, "-c", SHOW, json.dumps(wanted), " " * 200], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        too_long, shown, orig_argv = json.loads(proc.stdout.readline())
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            cmdline = f.read()
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(proc.pid)], capture_output=True, text=True).stdout
        pgrep = subprocess.run(["pgrep", "-f", "^%s -m ipykernel_launcher -f /tmp/kernel été" % sys.executable],
                               capture_output=True, text=True).stdout.split()
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert (too_long, shown, orig_argv) == (False, True, wanted)
    data = b"\0".join(arg.encode() for arg in wanted) + b"\0"
    # The whole area, as long as the command line it was started with; the rest NULs.
    started = b"\0".join(arg.encode() for arg in (sys.executable, "-c", SHOW, json.dumps(wanted), " " * 200)) + b"\0"
    assert cmdline == data + b"\0" * (len(started) - len(data))
    assert ps.strip() == " ".join(wanted)
    assert str(proc.pid) in pgrep


def test_without_proc_nothing_is_shown_and_nothing_fails(monkeypatch):
    """Not Linux (macOS: no /proc): what ps shows stays as it was, the kernel starts anyway."""
    def no_proc(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(launch, "open", no_proc, raising=False)
    if hasattr(sys, "orig_argv"):
        monkeypatch.setattr(sys, "orig_argv", list(sys.orig_argv))
    assert launch.show_command_line(["python", "-m", "k"]) is False
    assert getattr(sys, "orig_argv", ["python", "-m", "k"]) == ["python", "-m", "k"]


def test_the_first_publisher_gets_the_queue_and_the_patch_undoes_itself():
    """ipykernel's order: its ROUTERs, then IOPub (the queue), then user code's sockets (ZeroMQ's
    default again)."""
    import zmq

    original = zmq.Context.socket
    ctx = zmq.Context()
    try:
        assert launch.queue_iopub(5000) is True
        assert zmq.Context.socket is not original
        router = ctx.socket(zmq.ROUTER)
        iopub = ctx.socket(zmq.XPUB)
        assert zmq.Context.socket is original
        users = ctx.socket(zmq.PUB)
        assert (router.sndhwm, iopub.sndhwm, users.sndhwm) == (1000, 5000, 1000)
    finally:
        zmq.Context.socket = original
        ctx.destroy(linger=0)


def test_without_zmq_there_is_nothing_to_queue(monkeypatch):
    monkeypatch.setitem(sys.modules, "zmq", None)  # import zmq: ImportError
    assert launch.queue_iopub(5000) is False


def test_the_module_runs_as_a_program_head_at_the_cost_of_nothing():
    """It is the cold launcher's text (kernelcmd.LAUNCHER), run on every cold start: at module
    level only os and sys (every python has them loaded, os through site), no relative or __future__ import."""
    tree = ast.parse(Path(launch.__file__).read_text(), feature_version=(3, 8))
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(node, ast.Import) for node in imports)
    assert sorted(alias.name for node in imports for alias in node.names) == ["os", "sys"]
    r = subprocess.run([sys.executable, "-c", "import sys; print(sorted({'os', 'sys'} - set(sys.modules)))"],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "[]"
