"""Jupyter's own restarter (what jupyter_server runs) replaces an SSH kernel that died."""
from __future__ import annotations

import asyncio
import time

import pytest
from jupyter_client.ioloop import AsyncIOLoopKernelManager

from kernels import manage, spec_manager, wait_remote_clean


async def _pid(kc) -> int:
    reply = await kc.execute_interactive("import os; pid = os.getpid()", timeout=30,
                                         user_expressions={"pid": "pid"})
    return int(reply["content"]["user_expressions"]["pid"]["data"]["text/plain"])


@pytest.mark.timeout(120)
def test_a_dead_kernel_is_restarted_by_jupyters_restarter(ssh_host, tmp_path):
    prefix = tmp_path / "prefix"
    manage(ssh_host, prefix, "--host", ssh_host.alias, "--python", ssh_host.env_prefix)

    async def scenario() -> None:
        km = AsyncIOLoopKernelManager(kernel_name="ssh_btest", kernel_spec_manager=spec_manager(prefix))
        restarts = []
        await km.start_kernel()
        km.start_restarter()  # polls every 3 s, as in jupyter_server
        # (callbacks added before start_restarter() are silently dropped)
        km.add_restart_callback(lambda: restarts.append(time.monotonic()), "restart")
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            first = await _pid(kc)
            kc.execute("import os; os._exit(1)")
            deadline = time.monotonic() + 60
            while not restarts and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert restarts, "the restarter never restarted the kernel"
            await kc.wait_for_ready(timeout=60)
            assert await _pid(kc) != first
        finally:
            kc.stop_channels()
            km.stop_restarter()
            await km.shutdown_kernel()

    asyncio.run(scenario())
    assert not wait_remote_clean(ssh_host)
