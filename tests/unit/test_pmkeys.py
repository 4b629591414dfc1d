"""Which keys the paramiko backend offers, and in which order (real keys made by ssh-keygen;
the agent is a stand-in that lists keys, as paramiko.Agent does)."""
from __future__ import annotations

import subprocess

import paramiko
import pytest

from ssh_ipykernel.transport import paramiko_backend as pb
from ssh_ipykernel.transport.pmconfig import HostSettings


def keygen(path, passphrase: str = "", kind: str = "ed25519", fmt: str = "") -> paramiko.PKey:
    """Make a key pair with ssh-keygen; return its public key (what an agent would list)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *(["-b", "2048"] if kind == "rsa" else []),
                    *(["-m", fmt] if fmt else []), "-N", passphrase, "-C", "", "-f", str(path)],
                   check=True, capture_output=True, timeout=60)
    return paramiko.PublicBlob.from_file(f"{path}.pub")


class Agent:
    def __init__(self, *public):
        self.keys = [_Listed(p) for p in public]

    def get_keys(self):
        return self.keys


class _Listed:
    """An agent's key: only its public blob matters here."""

    def __init__(self, public: paramiko.PublicBlob) -> None:
        self.public = public

    def asbytes(self) -> bytes:
        return self.public.key_blob


def settings(*files, only: bool = False) -> HostSettings:
    return HostSettings(alias="h", hostname="h", port=22, user="u", identity_files=[str(f) for f in files],
                        identities_only=only)


def blobs(keys):
    return [k.asbytes() for k in keys]


def test_agent_keys_first_then_the_identity_files(tmp_path):
    in_agent = keygen(tmp_path / "a")
    keygen(tmp_path / "f")
    keys, notes = pb.keys_to_offer(settings(tmp_path / "f"), Agent(in_agent))
    assert blobs(keys) == [in_agent.key_blob, paramiko.PublicBlob.from_file(f"{tmp_path}/f.pub").key_blob]
    assert notes == []


def test_a_key_in_the_agent_and_in_a_file_is_offered_once(tmp_path):
    both = keygen(tmp_path / "k")
    keys, _ = pb.keys_to_offer(settings(tmp_path / "k"), Agent(both))
    assert blobs(keys) == [both.key_blob]


@pytest.mark.parametrize("keep_pub", [True, False], ids=["pub-file", "openssh-format-only"])
def test_identities_only_keeps_the_agent_keys_named_by_identity_files(tmp_path, keep_pub):
    """IdentitiesOnly yes and a key with a passphrase, loaded with ssh-add: as ssh does, the
    agent's copy of that key is offered (found by its .pub, or the public part that OpenSSH's
    key format keeps in clear) and no other agent key."""
    named = keygen(tmp_path / "named", passphrase="sekret")
    other = keygen(tmp_path / "other")
    if not keep_pub:
        (tmp_path / "named.pub").unlink()
    keys, notes = pb.keys_to_offer(settings(tmp_path / "named", only=True), Agent(other, named))
    assert blobs(keys) == [named.key_blob]
    assert notes == [f"{tmp_path}/named has a passphrase: load it with ssh-add"]


def test_identities_only_without_a_match_offers_no_agent_key(tmp_path):
    other = keygen(tmp_path / "other")
    keys, _ = pb.keys_to_offer(settings(tmp_path / "missing", only=True), Agent(other))
    assert keys == []
    keys, _ = pb.keys_to_offer(settings(tmp_path / "missing"), Agent(other))
    assert blobs(keys) == [other.key_blob]  # without IdentitiesOnly the agent's keys are all tried


def test_public_key_of_an_encrypted_pem_key_needs_its_pub_file(tmp_path):
    """Old PEM keys do not keep the public key in clear: only a .pub file can name them."""
    pem = keygen(tmp_path / "pem", passphrase="sekret", kind="rsa", fmt="PEM")
    assert pb._public_blob(str(tmp_path / "pem")) == pem.key_blob
    (tmp_path / "pem.pub").unlink()
    assert pb._public_blob(str(tmp_path / "pem")) is None


def test_an_unreadable_agent_is_a_note_not_a_failure(tmp_path):
    keygen(tmp_path / "f")

    class Broken:
        def get_keys(self):
            raise paramiko.SSHException("agent protocol error")

    keys, notes = pb.keys_to_offer(settings(tmp_path / "f"), Broken())
    assert len(keys) == 1 and notes == ["ssh agent: agent protocol error"]
