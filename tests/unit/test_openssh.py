"""Command lines the OpenSSH transport builds, and where its control sockets go."""
import os
import tempfile

from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.transport import TransportOptions, create_transport
from ssh_ipykernel.transport.base import Forward


def transport(spec="alice@btest:2222", **opts):
    return create_transport("openssh", parse_host(spec), TransportOptions(**opts), name="k1")


def test_master_argv(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", tempfile.mkdtemp(prefix="sik", dir="/tmp"))
    t = transport(ssh_config="/cfg", connect_timeout=7)
    argv = t.master_argv()
    assert argv[-2:] == ["--", "btest"], "the host must come after -- so it is never an option"
    assert argv[1:3] == ["-F", "/cfg"]
    for opt in ("ControlMaster=yes", "ControlPersist=60", "ConnectTimeout=7", "ClearAllForwardings=yes",
                "PermitLocalCommand=yes", f"ControlPath={t.control_path}"):
        assert opt in argv
    assert ["-l", "alice", "-p", "2222"] == argv[argv.index("-l"):argv.index("-l") + 4]
    assert not any("StrictHostKeyChecking" in a for a in argv), "host key checking is never weakened"
    assert os.path.basename(t.control_path).startswith("cm-")


def test_clients_never_prompt_and_never_become_masters():
    argv = transport().client_argv("-O", "check")
    assert "BatchMode=yes" in argv and "ControlMaster=no" in argv


def test_forward_spec_is_loopback_on_both_ends():
    assert Forward(50001, 40001).spec() == "127.0.0.1:50001:127.0.0.1:40001"


def test_control_sockets_fall_back_to_a_short_private_dir(tmp_path, monkeypatch):
    from ssh_ipykernel.transport import openssh

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / ("x" * 90)))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    d = openssh.control_dir()
    assert d.startswith(str(tmp_path)) and "xxxx" not in d
    assert oct(__import__("os").stat(d).st_mode & 0o777) == "0o700"
    short = tempfile.mkdtemp(prefix="sik", dir="/tmp")
    try:
        monkeypatch.setenv("JUPYTER_RUNTIME_DIR", short)
        assert openssh.control_dir() == f"{short}/ssh_ipykernel"
    finally:
        __import__("shutil").rmtree(short)


def test_log_level_errors_unless_debugging():
    assert "LogLevel=ERROR" in transport().master_argv()
    verbose = transport(verbose=True).master_argv()
    assert "-v" in verbose and "LogLevel=ERROR" not in verbose


def test_join_existing_never_starts_a_connection_and_its_sessions_cannot_make_one(monkeypatch):
    """``status`` asks hosts only over a master that is up: none there means False (no ssh run),
    and the sessions of a joined transport have a ProxyCommand that fails instead of a login."""
    import subprocess

    from ssh_ipykernel.transport import openssh

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", tempfile.mkdtemp(prefix="sik", dir="/tmp"))
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    monkeypatch.setattr(openssh.shared, "start_master", lambda *a, **k: started.append(a))
    t = transport()
    assert "ProxyCommand=false" not in t.client_argv(), "kernels' sessions may fall back (MaxSessions)"
    assert t.join_existing(0.5) is False and t.mux is None and started == []

    class Master:
        def __init__(self, path, timeout):
            self.path = path

        def alive_check(self, timeout):
            return 4242

        def close(self):
            pass

    monkeypatch.setattr(openssh, "MuxClient", Master)
    assert t.join_existing(0.5) is True and t.master_pid == 4242 and t.mux.path == t.control_path
    argv = t.client_argv("-T")
    assert "ProxyCommand=false" in argv and "BatchMode=yes" in argv and "ControlMaster=no" in argv
    assert argv.index("ProxyCommand=false") < argv.index("-T")
