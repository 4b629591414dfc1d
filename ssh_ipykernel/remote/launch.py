"""What a kernel started by the keeper does differently from ``python -m ipykernel_launcher``,
in one place for a cold start and a warm one.

Two things, and nothing else visible: the kernel's IOPub socket queues IOPUB_HWM messages for a
slow subscriber (the keeper), and the process shows the command line of ``python -m
ipykernel_launcher -f FILE`` (``sys.orig_argv``, and /proc/PID/cmdline, which ``ps`` and
``pgrep -f`` read) although it was started otherwise.

Two users:

* a cold kernel: kernelcmd.LAUNCHER, the ``python -c`` program the keeper starts instead of
  ``-m ipykernel_launcher``, is this module's source text followed by a call of ``cold_start``;
* a warm kernel: the warm pool (warmpool.py), shipped with this module, calls ``show_command_line``
  and ``queue_iopub`` in each kernel it forks (and ``show_command_line`` for its own title).

So this module must run as a program head too: standard library only, no relative imports, no
``from __future__``, Python >= 3.8, and only ``os`` and ``sys`` at module level (both loaded in
every python already): it runs on every cold kernel start, before the kernel's own imports.
"""
import os
import sys

#: Messages the kernel's IOPub publisher queues for a subscriber that is not reading. ZeroMQ's
#: default, 1000, is then dropped silently; the keeper is that subscriber, and a stall of half a
#: second (a busy host) lost thousands of lines and a cell's final idle status. At the rate a
#: kernel prints, this holds about half a minute of a stalled keeper; the keeper itself then
#: bounds what is kept (--output-buffer) and says what it dropped.
IOPUB_HWM = 100000


def queue_iopub(hwm: int) -> bool:
    """Give the next publisher socket ZeroMQ makes, the kernel's IOPub (ipykernel makes its
    ROUTERs first), a send queue of ``hwm`` messages; the patch of ``zmq.Context.socket`` then
    undoes itself, so that user code's sockets get ZeroMQ's defaults. False without zmq (the
    kernel then fails to start on its own, as it would have)."""
    try:
        import zmq
    except ImportError:
        return False
    socket = zmq.Context.socket

    def make(self, kind, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - zmq's own signature
        made = socket(self, kind, *args, **kwargs)
        if kind in (zmq.PUB, zmq.XPUB):
            zmq.Context.socket = socket
            made.sndhwm = hwm
        return made

    zmq.Context.socket = make
    return True


def show_command_line(argv: "list[str]") -> bool:
    """Make this process show ``argv`` as its command line: ``sys.orig_argv`` (Python >= 3.10),
    and its argv area, NUL-separated as the kernel passes a command line, the rest of the area
    NULs (a tool that splits at NULs finds ``argv``, then empty strings): what
    /proc/PID/cmdline, ``ps`` and ``pgrep -f`` show. The area cannot grow: False if ``argv``
    does not fit, or without /proc (not Linux), or if the write is refused.

    Written through /proc/self/mem rather than ctypes: no import (this runs on every cold start,
    and ctypes would be one more module in a kernel that may not use it), and a bad address or a
    kernel that refuses the write raises OSError where a ctypes write would crash the process.
    """
    if hasattr(sys, "orig_argv"):
        sys.orig_argv[:] = argv
    data = b"\0".join(os.fsencode(arg) for arg in argv) + b"\0"
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        if len(data) > end - start:
            return False
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data + b"\0" * (end - start - len(data)))
    except (OSError, ValueError, IndexError):
        return False
    return True


def cold_start(module: str = "ipykernel_launcher", hwm: int = IOPUB_HWM) -> None:
    """The end of kernelcmd.LAUNCHER (``python [options] -c LAUNCHER ARGS``): run ``module`` as
    ``python [options] -m module ARGS`` would (``sys.argv``, ``sys.path[0]``, ``__main__``), with
    that command line, after queue_iopub. (Its steps are not functions of their own: every
    function here is compiled on every cold start.)"""
    import runpy

    sys.path[0] = os.getcwd()  # -c put '' there, -m the working directory
    if hasattr(sys, "orig_argv"):
        argv = list(sys.orig_argv)
    else:  # Python < 3.10: decoded as Python decodes its arguments (os.fsencode reverses it)
        try:
            with open("/proc/self/cmdline", "rb") as f:
                argv = [os.fsdecode(arg) for arg in f.read().split(b"\0")[:-1]]
        except OSError:
            argv = []
    if "-c" in argv:
        at = argv.index("-c")
        show_command_line(argv[:at] + ["-m", module] + argv[at + 2:])
    queue_iopub(hwm)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
