import pytest
from hypothesis import given, strategies as st

from ssh_ipykernel.exceptions import HostSpecError
from ssh_ipykernel.hosts import parse_host


@pytest.mark.parametrize(
    "spec, user, host, port",
    [
        ("btest", None, "btest", None),
        ("alice@btest", "alice", "btest", None),
        ("btest:2222", None, "btest", 2222),
        ("ssh://alice@btest:2222", "alice", "btest", 2222),
        ("ssh://btest", None, "btest", None),
        ("alice@10.0.0.2:22", "alice", "10.0.0.2", 22),
        ("[::1]:2222", None, "::1", 2222),
        ("bob@[fe80::1]", "bob", "fe80::1", None),
        ("fe80::1", None, "fe80::1", None),
        ("first.last@corp.example@login.example.org", "first.last@corp.example", "login.example.org", None),
    ],
)
def test_parse(spec, user, host, port):
    h = parse_host(spec)
    assert (h.user, h.host, h.port) == (user, host, port)


def test_ssh_args_only_what_was_given():
    assert parse_host("btest").ssh_args() == []
    assert parse_host("a@b:23").ssh_args() == ["-l", "a", "-p", "23"]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("", "empty"),
        ("-oProxyCommand=touch /tmp/x", "spaces"),
        ("-oProxyCommand=x", "must not"),
        ("btest:99999", "between 1 and 65535"),
        ("btest:abc", "invalid port"),
        ("a;b", "not a host name"),
        ("$(touch)x", "not a host name"),
        ("u`id`@h", "user name"),
        ("[::1", "missing ']'"),
        ("btest\nother", "control"),
    ],
)
def test_rejects_with_a_reason(spec, words):
    with pytest.raises(HostSpecError) as e:
        parse_host(spec)
    assert words in str(e.value)


SHELL_META = set(";|&$`'\"<>(){}*?!\\ \t\n#=")


@given(st.text(min_size=1, max_size=40))
def test_accepted_hosts_never_carry_shell_metacharacters(spec):
    try:
        h = parse_host(spec)
    except HostSpecError:
        return
    assert not (set(h.host) & SHELL_META)
    assert not h.host.startswith("-")
    assert not (set(h.user or "") & SHELL_META)
