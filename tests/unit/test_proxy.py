from ssh_ipykernel.proxy import forwarded_env


def test_forwarded_env_takes_the_notebook_path_and_lets_env_options_win():
    local = {"JPY_SESSION_NAME": "/home/u/nb.ipynb", "HOME": "/home/u", "SSH_AUTH_SOCK": "/tmp/a"}
    assert forwarded_env(local, {"A": "1"}) == {"JPY_SESSION_NAME": "/home/u/nb.ipynb", "A": "1"}
    assert forwarded_env(local, {"JPY_SESSION_NAME": "x"}) == {"JPY_SESSION_NAME": "x"}
    assert forwarded_env({}, {}) == {}


def test_a_proxy_that_fails_leaves_its_error_in_its_state_file(tmp_path, monkeypatch):
    import pytest

    from ssh_ipykernel import exceptions as exc
    from ssh_ipykernel.hosts import parse_host
    from ssh_ipykernel.options import ConnectionOptions, ProxyOptions
    from ssh_ipykernel.proxy import Proxy
    from ssh_ipykernel.state import read_states, take_error

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    proxy = Proxy(ProxyOptions(ConnectionOptions(parse_host("btest")), connection_file=str(tmp_path / "kernel-abc-123.json")))
    with pytest.raises(exc.ConnectionFileError) as info:
        proxy.run()
    assert read_states() == []  # not a running proxy
    taken = take_error("abc-123")
    assert type(taken) is exc.ConnectionFileError and str(taken) == str(info.value) and taken.exit_code == 2


def test_a_restart_asks_the_agent_server_only_of_its_own_kernel_options_and_version(tmp_path, monkeypatch):
    """The pool record of a kernel's last start names its agent server; the restarted kernel's
    proxy uses it only if the record is its kernel id's, for the same options, written by this
    version's agent, and its idle time is not up."""
    import time

    from ssh_ipykernel.hosts import parse_host
    from ssh_ipykernel.options import ConnectionOptions, ProxyOptions
    from ssh_ipykernel.proxy import Proxy
    from ssh_ipykernel.session.bundle import agent_bundle_id
    from ssh_ipykernel.state import end_pool_record, record_pool

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))

    def proxy(host: str = "btest", kernel: str = "abc-123") -> Proxy:
        return Proxy(ProxyOptions(ConnectionOptions(parse_host(host)), connection_file=str(tmp_path / f"kernel-{kernel}.json")))

    first = proxy()
    fields = {"host": "btest", "agent_server": "/run/user/1000/jupyter/agent-0123.sock", "config": first._config_id(),
              "bundle": agent_bundle_id(), "warm": 600.0, "started": time.time()}
    record_pool("abc-123", fields)
    assert proxy()._restart_server() == fields["agent_server"]  # the restart of that kernel
    assert proxy(kernel="other-1")._restart_server() == ""  # another kernel: reads its login environment
    assert proxy(host="other")._restart_server() == ""  # other options (the kernelspec changed)
    record_pool("abc-123", dict(fields, bundle="0" * 16))
    assert proxy()._restart_server() == ""  # another version's agent
    record_pool("abc-123", fields)
    end_pool_record("abc-123", now=time.time() - 601)
    assert proxy()._restart_server() == ""  # ended longer ago than --warm: the server is gone
