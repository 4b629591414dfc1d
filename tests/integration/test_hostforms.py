"""The forms of --host the README promises, against a host whose sshd listens on port 2222 only,
on an IPv4 and an IPv6 address: ``alias`` (Port in the ssh config), ``host:port``,
``[v6addr]:port``, ``ssh://user@host:port``."""
from __future__ import annotations

import pytest

from kernels import Kernel, manage, wait_remote_clean

PORT = 2222


@pytest.fixture(scope="module")
def ptest(host_factory):
    with host_factory.create_host("ptest", port=PORT, ipv6=True) as host:
        yield host


FORMS = {
    "alias with Port": "{alias}",
    "host:port": "{address}:{port}",
    "[v6]:port": "[{address6}]:{port}",
    "ssh://user@host:port": "ssh://{user}@{address}:{port}",
}


@pytest.mark.parametrize("form", list(FORMS))
def test_kernel_on_a_host_at_another_port(ptest, tmp_path, jupyter_env, form):
    host_arg = FORMS[form].format(alias=ptest.alias, address=ptest.address, address6=ptest.address6,
                                  user=ptest.user, port=PORT)
    prefix = tmp_path / "prefix"
    manage(ptest, prefix, "--host", host_arg, "--python", ptest.env_prefix, "--name", "pt")
    k = Kernel(prefix, "pt", tmp_path / "proxy.log")
    try:
        k.start()
        assert k.value("__import__('socket').gethostname()") == ptest.hostname
        # The kernel's SSH connection is the one to port 2222 (the only port sshd listens on).
        peer = k.value("__import__('os').environ['SSH_CONNECTION'].split()[2:]")
        address = ptest.address6 if form == "[v6]:port" else ptest.address
        assert peer == str([address, str(PORT)]), peer
        assert k.shutdown_and_exit_code() == 0, k.log()
    finally:
        k.shutdown()
    assert not wait_remote_clean(ptest)


def test_check_of_an_ipv6_host_at_another_port(ptest, tmp_path, jupyter_env):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ssh_ipykernel.manage", "check", "--ssh-config", str(ptest.ssh_config),
                        "--host", f"[{ptest.address6}]:{PORT}", "--python", ptest.env_prefix],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"-> {ptest.address6} port {PORT}" in r.stdout, r.stdout
    assert "All 10 checks passed" in r.stdout
    assert not wait_remote_clean(ptest)
