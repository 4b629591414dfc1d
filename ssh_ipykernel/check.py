"""``manage check``: walk the path to a remote kernel step by step and time each step.

resolve (``ssh -G`` and DNS) -> connect (TCP, SSH banner) -> authenticate (the transport's
login) -> remote python, packages, connection file, kernel command (remote/probe.py, through
the same sh wrapper and loader as the agent) -> kernel start, execute, shutdown (a real
jupyter_client KernelManager on the kernelspec, so through the real proxy, as Jupyter runs it).

The first failing step stops the walk; its error is the one the proxy would raise, with the
same advice and exit code. Nothing here prints: the CLI renders the steps as they arrive.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import exceptions as exc
from .hosts import HostSpec
from .options import LaunchOptions, ProxyOptions
from .transport import build_transport, failures, resolve_kind
from .transport.messages import classify_ssh_failure, login_command

STEPS = ("resolve", "connect", "authenticate", "remote python", "packages", "connection file",
         "kernel command", "kernel start", "execute", "shutdown")
PYTHON_PROBE = "import socket; print(socket.gethostname())"


@dataclass
class Target:
    """What to check: the options a kernelspec gives the proxy, and the kernelspec itself."""

    options: ProxyOptions
    kernelspec: Dict[str, Any] = field(default_factory=dict)  # kernel.json to start
    resource_dir: Optional[str] = None  # an installed kernelspec's dir (check NAME)

    # The steps' view of the options.
    @property
    def hostspec(self) -> HostSpec:
        return self.options.host

    @property
    def host(self) -> str:
        """The host as written (``--host``)."""
        return self.options.host.spec

    @property
    def python(self) -> Optional[str]:
        return self.options.python

    @property
    def ssh_config(self) -> Optional[str]:
        return self.options.connection.ssh_config

    @property
    def timeout(self) -> float:
        return self.options.connection.timeout

    @property
    def env(self) -> Dict[str, str]:
        return dict(self.options.env)

    @property
    def sudo(self) -> bool:
        return self.options.sudo

    @property
    def launch(self) -> LaunchOptions:
        return self.options.launch

    @property
    def transport(self) -> str:
        """--transport: openssh, paramiko or auto."""
        return self.options.connection.transport


@dataclass
class Step:
    name: str
    ok: Optional[bool]  # None: not run (an earlier step failed, or not applicable)
    detail: str = ""
    seconds: Optional[float] = None
    error: Optional[exc.SSHKernelError] = None


class Checker:
    """Runs the steps in order; ``on_step`` gets each Step as soon as it is decided."""

    def __init__(self, target: Target, on_step: Callable[[Step], None] = lambda step: None) -> None:
        self.target = target
        self.on_step = on_step
        self.hostspec = target.hostspec
        self.steps: List[Step] = []
        self.ssh: Dict[str, str] = {}
        self.address: Optional[str] = None
        self.probe: Any = None
        self.transport: Any = None
        self.kernel: Any = None

    # -- driver -----------------------------------------------------------------------------------
    def run(self, until: Optional[str] = None) -> List[Step]:
        """Run the steps not run yet, up to and including ``until`` (default: all).

        ``manage add --remote-kernel`` stops after "kernel command" to build the kernelspec from
        what the remote said, then (with --check) resumes with the kernel start.
        """
        names = self.names
        last = names.index(until) if until else len(names) - 1
        try:
            for name in names[len(self.steps):last + 1]:
                if self.failed is not None:
                    self._record(Step(name, None, "not run"))
                    continue
                method = getattr(self, "step_" + name.replace(" ", "_"))
                started = time.monotonic()
                try:
                    result = method()
                except exc.SSHKernelError as e:
                    self._record(Step(name, False, e.message, time.monotonic() - started, e))
                    continue
                if result is None:
                    continue  # the step recorded itself (skipped)
                seconds = time.monotonic() - started
                if isinstance(result, tuple):  # (detail, seconds measured on the remote)
                    result, seconds = result
                self._record(Step(name, True, result, seconds))
        finally:
            self._close()
        return self.steps

    @property
    def names(self) -> Tuple[str, ...]:
        """The steps of this check: with --slurm, the scheduler's verdict after the login."""
        if self.target.options.slurm is None:
            return STEPS
        at = STEPS.index("authenticate") + 1
        return (*STEPS[:at], "scheduler", *STEPS[at:])

    @property
    def failed(self) -> Optional[Step]:
        return next((s for s in self.steps if s.ok is False), None)

    def _record(self, step: Step) -> None:
        self.steps.append(step)
        self.on_step(step)

    def _skip(self, name: str, why: str) -> None:
        self._record(Step(name, None, why))

    def _close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- reaching the host --------------------------------------------------------------------------
    def _ssh_config_hint(self) -> Dict[str, Any]:
        return {"host": self.hostspec.label, "spec": self.hostspec.spec, "ssh_config": self.target.ssh_config,
                "timeout": self.target.timeout}

    def _resolve_with_paramiko(self) -> None:
        """What ``ssh -G`` would say, from the paramiko backend's reading of the config."""
        from .transport import pmconfig

        settings = pmconfig.resolve(self.hostspec, pmconfig.load_config(self.target.ssh_config),
                                    config_path=self.target.ssh_config)
        self.ssh.update(hostname=settings.hostname, port=str(settings.port), user=settings.user,
                        proxyjump=",".join(settings.proxy_jump) or "none",
                        proxycommand=settings.proxy_command or "none")

    def step_resolve(self) -> str:
        if resolve_kind(self.target.transport) == "paramiko":
            self._resolve_with_paramiko()
        else:
            self._resolve_with_ssh()
        return self._resolved()

    def _resolve_with_ssh(self) -> None:
        argv = ["ssh", "-G", *(["-F", self.target.ssh_config] if self.target.ssh_config else []),
                *self.hostspec.ssh_args(), "--", self.hostspec.host]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise classify_ssh_failure(result.stderr, **self._ssh_config_hint())
        for line in result.stdout.splitlines():
            key, _, value = line.partition(" ")
            self.ssh.setdefault(key.lower(), value)

    def _resolved(self) -> str:
        hostname, port, user = self.ssh.get("hostname", ""), self.ssh.get("port", "22"), self.ssh.get("user", "")
        via = self._via()
        if via:
            return f"{self.hostspec.spec} is {user}@{hostname} port {port}, reached {via}"
        try:
            infos = socket.getaddrinfo(hostname, int(port), type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise failures.not_resolved(self.hostspec.label, self.hostspec.spec, detail_label="detail",
                                        detail=f"Could not resolve hostname {hostname}: {e}") from None
        self.address = str(infos[0][4][0])
        alias = "" if hostname == self.hostspec.host else f" (HostName {hostname})"
        return f"{self.hostspec.spec}{alias} -> {self.address} port {port}, user {user}"

    def _via(self) -> str:
        jump = self.ssh.get("proxyjump", "none")
        command = self.ssh.get("proxycommand", "none")
        if jump and jump != "none":
            return f"through ProxyJump {jump}"
        if command and command != "none":
            return "through a ProxyCommand"
        return ""

    def step_connect(self) -> Optional[str]:
        if self.address is None:
            self._skip("connect", f"{self._via()}: tested by logging in")
            return None
        port = int(self.ssh.get("port", "22"))
        try:
            with socket.create_connection((self.address, port), timeout=self.target.timeout) as sock:
                sock.settimeout(min(10.0, self.target.timeout))
                banner = sock.recv(256).decode("ascii", "replace").strip()
        except OSError as e:
            raise failures.socket_error(e, host=self.hostspec.label, spec=self.hostspec.spec, hostname=self.address,
                                        port=port, timeout=self.target.timeout) from None
        if not banner.startswith("SSH-"):
            msg = (
                f"something answers on {self.address} port {port}, but it is not an SSH server "
                f"(it said {banner[:60]!r}); check the port (host:port, or Port in ssh config)"
            )
            raise exc.SSHConnectionError(msg, host=self.hostspec.label)
        return f"{self.address} port {port} answers: {banner.splitlines()[0][:60]}"

    def step_authenticate(self) -> str:
        self.transport = build_transport(self.target.options.connection, connect_timeout=self.target.timeout,
                                         name=f"check-{os.getpid()}")
        try:
            self.transport.connect()
        except exc.LoginRequiredError as e:
            command = login_command(self.hostspec.spec, self.target.ssh_config)
            msg = (f"{self.hostspec.label} needs an interactive login (a password, one-time code or key "
                   f"passphrase typed by a person), and no login is open: run `{command}` in a terminal, then "
                   f"check again. Kernels of {self.hostspec.label} wait for that login (--login-wait) and use it")
            raise exc.LoginRequiredError(msg, host=e.host, detail=e.detail) from None
        if getattr(self.transport, "login_master", False):
            return (f"logged in as {self.ssh.get('user', '?')} through the connection opened by "
                    f"`ssh-ipykernel login` (host key known, no prompt)")
        return f"logged in as {self.ssh.get('user', '?')} (host key known, key accepted, no prompt)"

    def step_scheduler(self) -> str:
        """--slurm: ``sbatch --test-only`` with the kernel's options and batch script on the login node."""
        from .session.startcmd import start_command
        from .slurm import Scheduler, batch_script

        slurm = self.target.options.slurm
        assert slurm is not None
        steps = start_command(pre_command=self.target.launch.pre_command).steps  # type: ignore[attr-defined]
        found = Scheduler(self.transport, host=self.hostspec.label).test_only(
            slurm, f"check-{os.getpid()}", batch_script(steps, self.target.python))
        return (f"sbatch --test-only: would start at {found['start']} on {found['nodes']} in partition "
                f"{found['partition']} ({found['processors']} CPUs); the remote python below is the login node's")

    # -- the remote python (one probe round trip) ---------------------------------------------------
    def _part_error(self, part: Dict[str, Any]) -> exc.SSHKernelError:
        from .remoteinfo import error_for_part

        return error_for_part(part, host=self.hostspec.label, python=self.target.python,
                              pre_command=self.target.launch.pre_command)

    def step_remote_python(self) -> str:
        from .remoteinfo import run_probe

        self.probe = run_probe(self.transport, python=self.target.python, sudo=self.target.sudo,
                               env=self.target.env, launch=self.target.launch, timeout=self.target.timeout)
        data = self.probe.data
        pre = " after the --pre-command" if self.target.launch.pre_command else ""
        return f"{data.get('python')} (Python {data.get('python_version')}) on {data.get('hostname')}{pre}"

    def step_packages(self) -> Tuple[str, float]:
        data = self.probe.data
        if not self.probe.part("requirements").get("ok"):
            raise self._part_error(self.probe.part("requirements"))
        found = [f"{name} {data[name]}" for name in ("ipykernel", "jupyter_client") if data.get(name)]
        return ", ".join(found), 0.0

    def step_connection_file(self) -> Tuple[str, float]:
        part = self.probe.part("connection_file")
        if not part.get("ok"):
            raise self._part_error(part)
        return f"written in {part.get('dir')} (mode {part.get('mode')}) and removed", part.get("seconds", 0.0)

    def step_kernel_command(self) -> Tuple[str, float]:
        import shlex

        part = self.probe.part("kernel")
        if not part.get("ok"):
            raise self._part_error(part)
        self._close()  # the next steps go through the proxy, with its own connection
        text = shlex.join(part.get("argv") or [])
        where = f" in {part['cwd']}" if part.get("cwd") else ""
        language = f", language {part['language']}" if part.get("language") else ""
        return f"{text}{where}{language}", part.get("seconds", 0.0)

    # -- through the proxy, as Jupyter runs it ------------------------------------------------------
    def step_kernel_start(self) -> str:
        self.kernel = KernelRun(self.target)
        return self.kernel.start()

    def step_execute(self) -> str:
        return self.kernel.execute()

    def step_shutdown(self) -> str:
        return self.kernel.shutdown()


class KernelRun:
    """One kernel started through jupyter_client's KernelManager from the kernelspec."""

    def __init__(self, target: Target) -> None:
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        self.target = target
        self.tmp = tempfile.TemporaryDirectory(prefix="ssh_ipykernel-check-")
        if target.resource_dir:
            kernel_dir, name = os.path.split(os.path.normpath(target.resource_dir))
        else:
            kernel_dir, name = os.path.join(self.tmp.name, "kernels"), "ssh-check"
            os.makedirs(os.path.join(kernel_dir, name))
            with open(os.path.join(kernel_dir, name, "kernel.json"), "w", encoding="utf-8") as f:
                json.dump(target.kernelspec, f)
        self.km = KernelManager(kernel_name=name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernel_dir]))
        self.log_path = os.path.join(self.tmp.name, "proxy.log")
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.kc: Any = None
        self.language = ""

    def _proxy_failure(self, code: Optional[int]) -> exc.SSHKernelError:
        """Why the proxy exited with ``code``: the error it recorded in its state file (the
        same typed error, message and exit code it ended with), else ``proxy_exited``."""
        from .connection import kernel_id_from_path
        from .state import take_error

        recorded = take_error(kernel_id_from_path(self.km.connection_file)) if self.km.connection_file else None
        return recorded or proxy_exited(self._log(), code)

    def _proxy_died(self) -> exc.SSHKernelError:
        process = getattr(self.km.provisioner, "process", None)
        return self._proxy_failure(process.wait(10) if process is not None else None)

    def start(self) -> str:
        started = time.monotonic()
        try:
            self.km.start_kernel(stdout=self.log_file, stderr=self.log_file)
        except OSError as e:  # the kernelspec's python is gone (a removed virtualenv)
            argv0 = (self.km.kernel_spec.argv or ["?"])[0] if self.km.kernel_spec else "?"
            msg = (
                f"cannot start the kernelspec's proxy {argv0}: {e.strerror or e}. The Python it names "
                f"is gone; run `python -m ssh_ipykernel.manage add ...` again from the Python "
                f"environment that has ssh_ipykernel"
            )
            raise exc.UsageError(msg) from None
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=self.target.timeout + 30)
        except RuntimeError as e:
            if not self.km.is_alive():
                raise self._proxy_died() from None
            msg = f"the kernel did not answer within {self.target.timeout + 30:.0f} s ({e}); raise --timeout if the host is slow"
            raise exc.KernelStartError(msg, host=self.target.host) from None
        reply = self.kc.kernel_info(reply=True, timeout=10)["content"]
        info = reply.get("language_info", {})
        self.language = str(info.get("name", ""))
        implementation = reply.get("implementation", "?")
        version = f" {info['version']}" if info.get("version") else ""
        return (f"{implementation} kernel (language {self.language or '?'}{version}) answered "
                f"kernel_info {time.monotonic() - started:.2f} s after the proxy started")

    def execute(self) -> str:
        code = PYTHON_PROBE if self.language == "python" else ""
        out: List[str] = []

        def hook(msg: Dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = self.kc.execute_interactive(code, timeout=self.target.timeout, output_hook=hook)["content"]
        if reply.get("status") != "ok":
            msg = f"the kernel answered an execute request with {reply.get('status')}: {reply.get('ename', '')} {reply.get('evalue', '')}"
            raise exc.KernelStartError(msg, host=self.target.host)
        if code:
            return f"{code!r} printed {''.join(out).strip()!r}"
        return "an empty cell ran (status ok)"

    def shutdown(self) -> str:
        self.kc.stop_channels()
        self.km.shutdown_kernel()
        process = getattr(self.km.provisioner, "process", None)
        code = process.returncode if process is not None else 0
        if code not in (0, None):
            raise self._proxy_failure(code)
        return "the kernel and its proxy ended cleanly"

    def _log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def close(self) -> None:
        """Stop whatever is still running; safe to call twice."""
        from .connection import kernel_id_from_path
        from .state import take_error

        try:
            if self.kc is not None:
                self.kc.stop_channels()
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
            if self.km.connection_file:  # a proxy ended with SIGKILL leaves its state file
                take_error(kernel_id_from_path(self.km.connection_file))
            self.km.cleanup_resources()
        except Exception:  # noqa: BLE001 - cleanup after a failure must not hide that failure
            pass
        self.kc = None
        if not self.log_file.closed:
            self.log_file.close()
        self.tmp.cleanup()


def proxy_exited(log: str, code: Optional[int]) -> exc.ProxyExitedError:
    """A proxy that exited with ``code`` and left no error of its own (killed by a signal, or a
    crash): the code, and the end of its log to show what happened."""
    exit_code = code if code and code > 0 else 1  # killed by a signal: plain failure
    tail = "\n".join(log.splitlines()[-8:])
    return exc.ProxyExitedError(f"the proxy exited with code {code} before the kernel answered", exit_code=exit_code,
                                detail=tail)
