from ssh_ipykernel.proxy import forwarded_env


def test_forwarded_env_takes_the_notebook_path_and_lets_env_options_win():
    local = {"JPY_SESSION_NAME": "/home/u/nb.ipynb", "HOME": "/home/u", "SSH_AUTH_SOCK": "/tmp/a"}
    assert forwarded_env(local, {"A": "1"}) == {"JPY_SESSION_NAME": "/home/u/nb.ipynb", "A": "1"}
    assert forwarded_env(local, {"JPY_SESSION_NAME": "x"}) == {"JPY_SESSION_NAME": "x"}
    assert forwarded_env({}, {}) == {}
