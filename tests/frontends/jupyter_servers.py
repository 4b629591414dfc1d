"""Real Jupyter servers for the front-end tests: JupyterLab and the Kernel Gateway, each a
subprocess on 127.0.0.1 with a random port and a token, its output kept in a log file."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from testutil import free_port


class ServerError(AssertionError):
    """A server did not come up; the message carries the tail of its log."""


class JupyterServer:
    """A server process owned by the test; ``close()`` (safe twice) stops it.

    ``url`` is ``http://127.0.0.1:<port>``; requests carry ``Authorization: token <token>``.
    """

    def __init__(self, argv: List[str], *, env: Mapping[str, str], token_var: str, log_path: Path) -> None:
        self.token = secrets.token_hex(16)
        # The token goes in by environment, not argv (argv is visible in ps).
        env = {**env, token_var: self.token}
        self.log_path = log_path
        self.url = ""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        # Own session: a Ctrl-C in the terminal running pytest must not hit the server before
        # the test has shut its kernels down.
        self.process = subprocess.Popen([*argv], env=dict(env), stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._closed = False

    # -- talking to it ------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                timeout: float = 30) -> tuple[int, Any]:
        """An API call with the token; returns (status, decoded JSON body, or the text of a body
        that is not JSON, or None)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, (json.loads(raw) if raw.strip() else None)
        except ValueError:  # an HTML error page
            return status, raw.decode(errors="replace")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, path: str, timeout: float) -> None:
        """Until ``GET path`` answers 200 (the server process must stay up meanwhile)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.process.args[2]} exited with {self.process.returncode} "
                                  f"during start-up:\n{self.log()[-3000:]}")
            if self.url:
                try:
                    status, _ = self.request("GET", path, timeout=5)
                    if status == 200:
                        return
                    last = f"HTTP {status}"
                except OSError as e:
                    last = str(e)
            time.sleep(0.2)
        raise ServerError(f"server not ready after {timeout} s ({last}):\n{self.log()[-3000:]}")

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """SIGTERM (the servers shut their kernels down on it), SIGKILL after 20 s."""
        if self._closed:
            return
        self._closed = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> "JupyterServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_jupyterlab(root_dir: Path, log_path: Path, *, timeout: float = 60) -> JupyterServer:
    """``jupyter lab`` on 127.0.0.1, a port the OS picks (read back from its jpserver-<pid>.json),
    a random token; JupyterLab's news and update checks off (no requests leave the machine and no
    toast covers the page)."""
    env = dict(os.environ)
    settings = Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings" / "@jupyterlab" / \
        "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    server = JupyterServer([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                            "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
                            f"--ServerApp.root_dir={root_dir}",
                            # Less to start on a 2-core machine: no language servers, terminals
                            # or extension manager are used here.
                            "--ServerApp.jpserver_extensions", "jupyter_lsp=False",
                            "--ServerApp.jpserver_extensions", "jupyter_server_terminals=False",
                            "--LabApp.extension_manager=readonly"],
                           env=env, token_var="JUPYTER_TOKEN", log_path=log_path)
    try:
        info = Path(env["JUPYTER_RUNTIME_DIR"]) / f"jpserver-{server.process.pid}.json"
        deadline = time.monotonic() + timeout
        port = None
        while port is None and server.process.poll() is None and time.monotonic() < deadline:
            try:  # the server may be writing it right now: empty or partial until complete
                port = json.loads(info.read_text())["port"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.2)
        if port is not None:
            server.url = f"http://127.0.0.1:{port}"
        server.wait_ready("/api/status", max(1.0, deadline - time.monotonic()))
    except BaseException:
        server.close()
        raise
    return server


def start_kernel_gateway(log_path: Path, *, env_process_whitelist: List[str] = (),
                         timeout: float = 60, attempts: int = 3) -> JupyterServer:
    """``jupyter kernelgateway`` on 127.0.0.1 with a token; ``env_process_whitelist`` is the
    gateway's own option: which of its environment variables a kernel started with an ``env``
    in the request may inherit (PATH always is)."""
    options = [f"--KernelGatewayApp.env_process_whitelist={var}" for var in env_process_whitelist]
    for attempt in range(attempts):
        # The gateway cannot report a port the OS chose: take a free one, and try again with
        # another in the rare case that it is taken in between.
        port = free_port()
        server = JupyterServer([sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                                f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0",
                                *options], env=os.environ, token_var="KG_AUTH_TOKEN",
                                log_path=log_path)
        server.url = f"http://127.0.0.1:{port}"
        try:
            server.wait_ready("/api/kernelspecs", timeout)
            return server
        except ServerError:
            server.close()
            if attempt + 1 == attempts or "no available port" not in server.log():
                raise
    raise AssertionError("unreachable")
