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
