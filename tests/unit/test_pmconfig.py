"""The paramiko backend's reading of the ssh config, and its host key check (no network)."""
from __future__ import annotations

import base64
import hashlib
import hmac

import paramiko
import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.transport import pmconfig


def config(tmp_path, text: str):
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return pmconfig.load_config(str(path)), str(path)


def test_the_options_it_honours(tmp_path):
    cfg, path = config(tmp_path, """
Host btest
  HostName 10.1.2.3
  Port 2222
  User sik
  IdentityFile "/keys/with space"
  IdentityFile ~/.ssh/id_other
  IdentitiesOnly yes
  UserKnownHostsFile "/kh/one file" /kh/two
  GlobalKnownHostsFile /dev/null
  HostKeyAlias btest-key
""")
    s = pmconfig.resolve(parse_host("btest"), cfg, config_path=path)
    assert (s.hostname, s.port, s.user) == ("10.1.2.3", 2222, "sik")
    assert s.identity_files[0] == "/keys/with space" and s.identity_files[1].endswith("/.ssh/id_other")
    assert s.identities_only
    assert s.known_hosts == ["/kh/one file", "/kh/two", "/dev/null"]
    assert s.known_hosts_name == "[btest-key]:2222"
    assert not s.proxy_jump and s.proxy_command is None


def test_the_host_spec_wins_over_the_config(tmp_path):
    cfg, path = config(tmp_path, "Host btest\n  HostName 10.1.2.3\n  Port 2222\n  User sik\n")
    s = pmconfig.resolve(parse_host("other@btest:2200"), cfg, config_path=path)
    assert (s.hostname, s.port, s.user) == ("10.1.2.3", 2200, "other")


def test_defaults_without_a_config(tmp_path):
    s = pmconfig.resolve(parse_host("plain.example"), paramiko.SSHConfig())
    assert (s.hostname, s.port) == ("plain.example", 22)
    assert s.known_hosts_name == "plain.example"
    assert s.known_hosts[0].endswith("/.ssh/known_hosts")


def test_proxy_jump_and_proxy_command(tmp_path):
    cfg, path = config(tmp_path, """
Host inner
  HostName 10.9.9.9
  ProxyJump bastion,user@second:2022
Host piped
  HostName 10.9.9.8
  ProxyCommand nc %h %p
""")
    assert pmconfig.resolve(parse_host("inner"), cfg).proxy_jump == ["bastion", "user@second:2022"]
    assert pmconfig.resolve(parse_host("piped"), cfg).proxy_command == "nc 10.9.9.8 22"
    hop = pmconfig.resolve_hop("user@second:2022", cfg)
    assert (hop.user, hop.hostname, hop.port) == ("user", "second", 2022)


@pytest.mark.parametrize("line, named", [
    ("PKCS11Provider /usr/lib/opensc.so", "PKCS11Provider"),
    ("CertificateFile ~/.ssh/id_cert.pub", "CertificateFile"),
    ("GSSAPIAuthentication yes", "GSSAPIAuthentication"),
    ("CanonicalizeHostname yes", "canonicaldomains"),  # paramiko's parser fails without CanonicalDomains
])
def test_options_it_cannot_honour_are_refused_naming_the_alternative(tmp_path, line, named):
    cfg, path = config(tmp_path, f"Host btest\n  HostName 10.1.2.3\n  {line}\n")
    with pytest.raises(exc.UsageError) as info:
        pmconfig.resolve(parse_host("btest"), cfg, config_path=path)
    assert named in str(info.value) and "--transport openssh" in str(info.value)
    assert info.value.exit_code == 2


def test_included_files_are_read_as_ssh_reads_them(tmp_path, monkeypatch):
    """Include at the top (globs in lexical order, relative to ~/.ssh, missing files skipped),
    and inside a Host block for a file of options (which then apply to that block only)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    dot_ssh = tmp_path / ".ssh"
    (dot_ssh / "conf.d").mkdir(parents=True)
    (dot_ssh / "conf.d" / "20-second").write_text("Host second\n  HostName 10.0.0.2\n  User two\n")
    (dot_ssh / "conf.d" / "10-first").write_text("Host second\n  Port 2022\nHost first\n  HostName 10.0.0.1\n")
    (tmp_path / "opts").write_text("  User optuser\n  Port 2200\n")
    cfg, path = config(tmp_path, f"""
Include conf.d/* missing.conf
Host btest
  Include {tmp_path}/opts
  HostName 10.1.2.3
Host other
  HostName 10.4.5.6
""")
    first, second = (pmconfig.resolve(parse_host(h), cfg) for h in ("first", "second"))
    assert (first.hostname, first.port) == ("10.0.0.1", 22)
    assert (second.hostname, second.port, second.user) == ("10.0.0.2", 2022, "two")  # 10-first read first
    btest = pmconfig.resolve(parse_host("btest"), cfg)
    assert (btest.hostname, btest.port, btest.user) == ("10.1.2.3", 2200, "optuser")
    other = pmconfig.resolve(parse_host("other"), cfg)
    assert (other.hostname, other.port) == ("10.4.5.6", 22) and other.user != "optuser"


def test_an_include_of_host_blocks_inside_a_block_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "blocks").write_text("Host inner\n  HostName 10.0.0.9\n")
    path = tmp_path / "ssh_config"
    path.write_text(f"Host btest\n  Include {tmp_path}/blocks\n")
    with pytest.raises(exc.UsageError) as info:
        pmconfig.load_config(str(path))
    assert "Host or Match blocks" in str(info.value) and "--transport openssh" in str(info.value)


def test_an_include_loop_is_an_error_not_a_hang(tmp_path):
    path = tmp_path / "ssh_config"
    path.write_text(f"Include {path}\n")
    with pytest.raises(exc.UsageError, match="nests Include more than 16 deep"):
        pmconfig.load_config(str(path))


def test_harmless_values_are_accepted(tmp_path):
    cfg, path = config(tmp_path, "Host btest\n  GSSAPIAuthentication no\n  ControlMaster auto\n")
    assert pmconfig.resolve(parse_host("btest"), cfg).hostname == "btest"


# -- host keys ------------------------------------------------------------------------------------
def _ed25519(seed: int) -> paramiko.PKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    kind, data = raw.decode().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def _settings(known, port=22):
    return pmconfig.HostSettings(alias="btest", hostname="10.1.2.3", port=port, user="u", known_hosts=[str(known)])


def _line(name: str, key: paramiko.PKey, hashed: bool = False) -> str:
    if hashed:
        salt = b"0123456789abcdefghij"
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return f"{name} {key.get_name()} {key.get_base64()}\n"


@pytest.mark.parametrize("hashed", [False, True])
@pytest.mark.parametrize("port", [22, 2222])
def test_a_known_key_passes(tmp_path, hashed, port):
    key = _ed25519(1)
    s = _settings(tmp_path / "known_hosts", port)
    (tmp_path / "known_hosts").write_text(_line(s.known_hosts_name, key, hashed))
    pmconfig.check_host_key(s, key, pmconfig.load_known_hosts(s.known_hosts))


def test_an_unknown_key_is_an_error_with_its_fingerprint(tmp_path):
    (tmp_path / "known_hosts").write_text(_line("10.1.2.4", _ed25519(1)))
    s = _settings(tmp_path / "known_hosts")
    key = _ed25519(2)
    with pytest.raises(exc.HostKeyError) as info:
        pmconfig.check_host_key(s, key, pmconfig.load_known_hosts(s.known_hosts))
    text = str(info.value)
    assert "not in known_hosts" in text and pmconfig.fingerprint(key) in text and "ssh-keyscan" in text
    assert info.value.exit_code == 24


def test_a_changed_key_is_an_error(tmp_path):
    s = _settings(tmp_path / "known_hosts", 2222)
    (tmp_path / "known_hosts").write_text(_line(s.known_hosts_name, _ed25519(1), hashed=True))
    with pytest.raises(exc.HostKeyError) as info:
        pmconfig.check_host_key(s, _ed25519(2), pmconfig.load_known_hosts(s.known_hosts))
    assert "CHANGED" in str(info.value) and "-R '[10.1.2.3]:2222'" in str(info.value)


def test_a_missing_known_hosts_file_means_unknown(tmp_path):
    s = _settings(tmp_path / "nope")
    with pytest.raises(exc.HostKeyError, match="not in known_hosts"):
        pmconfig.check_host_key(s, _ed25519(1), pmconfig.load_known_hosts(s.known_hosts))


def test_fingerprint_is_openssh_sha256():
    key = _ed25519(1)
    digest = hashlib.sha256(base64.b64decode(key.get_base64())).digest()
    assert pmconfig.fingerprint(key) == "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def test_known_key_types_are_offered_first():
    available = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256")
    assert pmconfig.preferred_key_types(None, available) == available
    assert pmconfig.preferred_key_types(["ssh-rsa"], available)[:2] == ("rsa-sha2-512", "rsa-sha2-256")
    assert pmconfig.preferred_key_types(["ecdsa-sha2-nistp256"], available)[0] == "ecdsa-sha2-nistp256"


def test_a_host_listed_twice_passes_with_either_key(tmp_path):
    """An old key left above the new one: ssh accepts the new key (every matching line counts)."""
    s = _settings(tmp_path / "known_hosts")
    (tmp_path / "known_hosts").write_text(_line(s.known_hosts_name, _ed25519(1))
                                          + _line(s.known_hosts_name, _ed25519(2), hashed=True))
    known = pmconfig.load_known_hosts(s.known_hosts)
    pmconfig.check_host_key(s, _ed25519(2), known)
    pmconfig.check_host_key(s, _ed25519(1), known)
    with pytest.raises(exc.HostKeyError, match="CHANGED"):
        pmconfig.check_host_key(s, _ed25519(3), known)


def test_patterns_negations_and_markers(tmp_path):
    s = _settings(tmp_path / "known_hosts")  # 10.1.2.3
    key, other = _ed25519(1), _ed25519(2)
    (tmp_path / "known_hosts").write_text(
        "# comment\n\n"
        + _line("10.1.2.*,!10.1.2.3", other)  # negated: not for 10.1.2.3
        + _line("10.1.?.3", key) + _line("[10.1.2.3]:2222", other)  # brackets are literal
        + f"@cert-authority *.example {other.get_name()} {other.get_base64()}\n"
        + "10.1.2.3 ssh-ed25519 not-base64!\n")
    known = pmconfig.load_known_hosts(s.known_hosts)
    assert [k.blob for k in known.for_host("10.1.2.3")] == [key.asbytes()]
    assert known.types_for("10.1.2.3") == ["ssh-ed25519"]
    pmconfig.check_host_key(s, key, known)
    with pytest.raises(exc.HostKeyError, match="CHANGED"):
        pmconfig.check_host_key(s, other, known)


def test_a_revoked_key_is_refused_even_if_listed(tmp_path):
    s = _settings(tmp_path / "known_hosts")
    key = _ed25519(1)
    (tmp_path / "known_hosts").write_text(_line(s.known_hosts_name, key)
                                          + f"@revoked * {key.get_name()} {key.get_base64()}\n")
    with pytest.raises(exc.HostKeyError, match="@revoked") as info:
        pmconfig.check_host_key(s, key, pmconfig.load_known_hosts(s.known_hosts))
    assert info.value.exit_code == 24


def test_match_exec_works_without_invoke(tmp_path):
    """pmconfig keeps invoke out of paramiko (7 MB, 57 ms) and runs Match exec itself, as ssh does."""
    cfg, path = config(tmp_path, """
Match host btest exec "test -d /"
  HostName 10.7.7.7
Match host btest exec "test -d /no/such/dir"
  Port 2222
""")
    s = pmconfig.resolve(parse_host("btest"), cfg, config_path=path)
    assert (s.hostname, s.port) == ("10.7.7.7", 22)


def test_the_paramiko_transport_loads_without_invoke():
    import subprocess
    import sys

    probe = ("import sys\nfrom ssh_ipykernel.transport import paramiko_backend, pmconfig\n"
             "pmconfig.load_config('/dev/null')\nprint('invoke' in sys.modules, 'paramiko' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True"], out.stderr
