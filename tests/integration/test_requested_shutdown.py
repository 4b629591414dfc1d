"""A shutdown that was asked for (SIGTERM or SIGHUP to the proxy, as Jupyter sends) is a clean
exit, also when the agent's shutdown ladder has to terminate a kernel that is slow to exit."""
from __future__ import annotations

import signal

import pytest

from kernels import Kernel, manage, wait_remote_clean


@pytest.mark.timeout(120)
def test_a_requested_shutdown_of_a_slowly_exiting_kernel_is_not_a_kernel_death(ssh_host, tmp_path):
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix)
    k = Kernel(prefix, f"ssh_{ssh_host.alias}", tmp_path / "proxy.log")
    try:
        k.start()
        # Clean-up at exit that takes longer than the agent waits (5 s): flushing data,
        # closing a database or Spark session.
        content, _, _ = k.execute("import atexit, time; atexit.register(time.sleep, 8)")
        assert content["status"] == "ok"
        k.proxy.send_signal(signal.SIGTERM)  # SIGHUP takes the same path
        returncode = k.proxy.wait(30)
        assert "died" not in k.log(), k.log()
        assert returncode == 0, k.log()
    finally:
        k.shutdown()
    assert not wait_remote_clean(ssh_host)
