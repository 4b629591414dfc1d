"""ssh's real messages -> typed errors with advice."""
import pytest

from ssh_ipykernel import exceptions as exc
from ssh_ipykernel.transport.messages import PROMPT_RE, classify_ssh_failure

CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Add correct host key in /tmp/dev/known_changed to get rid of this message.
Offending ED25519 key in /tmp/dev/known_changed:1
  remove with:
  ssh-keygen -f "/tmp/dev/known_changed" -R "[127.0.0.1]:2299"
Host key for [127.0.0.1]:2299 has changed and you have requested strict checking.
Host key verification failed.
"""


def classify(text, **kw):
    return classify_ssh_failure(text, host="btest", spec="btest", **kw)


def test_changed_host_key_names_file_and_removal_command():
    e = classify(CHANGED, ssh_config="/etc/cfg")
    assert isinstance(e, exc.HostKeyError)
    assert "CHANGED" in e.message
    assert "/tmp/dev/known_changed:1" in e.message
    assert 'ssh-keygen -f "/tmp/dev/known_changed" -R "[127.0.0.1]:2299"' in e.message
    assert "ssh -F /etc/cfg btest" in e.message
    assert "never bypasses" in e.message


@pytest.mark.parametrize(
    "text",
    [
        "No ED25519 host key is known for [127.0.0.1]:2299 and you have requested strict checking.\n"
        "Host key verification failed.\n",
        "The authenticity of host '10.0.0.2 (10.0.0.2)' can't be established.\n"
        "ED25519 key fingerprint is SHA256:abc.\n"
        "Are you sure you want to continue connecting (yes/no/[fingerprint])? ",
        "Host key verification failed.\n",
    ],
)
def test_unknown_host_key_says_how_to_accept(text):
    e = classify(text)
    assert isinstance(e, exc.HostKeyError)
    assert "not in known_hosts" in e.message and "answer yes" in e.message


@pytest.mark.parametrize(
    "text, cls, words",
    [
        ("ssh: Could not resolve hostname nosuch: Name or service not known\n", exc.HostNotFoundError, "resolve"),
        ("ssh: connect to host 10.1.1.2 port 22: Connection refused\n", exc.SSHConnectionRefusedError, "refused"),
        ("ssh: connect to host 10.1.1.2 port 22: Connection timed out\n", exc.ConnectionTimeoutError, "did not answer"),
        ("ssh: connect to host 10.1.1.2 port 22: No route to host\n", exc.ConnectionTimeoutError, "unreachable"),
        ("u@10.1.1.2: Permission denied (publickey).\n", exc.AuthenticationError, "authorized_keys"),
        ("u@10.1.1.2's password: ", exc.LoginRequiredError, "ssh-ipykernel login btest"),
        ("(u@10.1.1.2) Password: ", exc.LoginRequiredError, "typed by a person"),
        ("(u@10.1.1.2) Verification code: ", exc.LoginRequiredError, "ssh-ipykernel login btest"),
        ("Enter passphrase for key '/home/u/.ssh/id_ed25519': ", exc.LoginRequiredError, "ssh-add"),
        ("/tmp/cfg: line 3: Bad configuration option: hostnam\n", exc.SSHConnectionError, "configuration"),
        ("kex_exchange_identification: Connection closed by remote host\n", exc.SSHConnectionError, "closed"),
    ],
)
def test_classification(text, cls, words):
    e = classify(text, timeout=7)
    assert type(e) is cls
    assert words in e.message
    assert e.host == "btest"


def test_detail_keeps_the_tail_without_banner_art():
    e = classify(CHANGED)
    assert "@@@" not in e.detail
    assert "Host key verification failed." in str(e)


@pytest.mark.parametrize(
    "prompt",
    [
        b"u@h's password: ",
        b"Password: ",
        b"Enter passphrase for key '/k': ",
        b"Verification code: ",
        b"Are you sure you want to continue connecting (yes/no/[fingerprint])? ",
    ],
)
def test_prompts_are_recognised(prompt):
    assert PROMPT_RE.search(b"some banner\r\n" + prompt)


def test_ordinary_output_is_not_a_prompt():
    assert not PROMPT_RE.search(b"Warning: Permanently added '10.0.0.2' (ED25519) to the list of known hosts.\r\n")
