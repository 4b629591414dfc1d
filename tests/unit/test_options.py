"""The options model: parsed once, defaults in one place, and a kernelspec argv that reads back
to the same options through the proxy's own command line."""
import shlex
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssh_ipykernel import options as o
from ssh_ipykernel.hosts import parse_host
from ssh_ipykernel.proxycli import parse_proxy_argv, proxy_command
from ssh_ipykernel.remote import keeper, protocol
from ssh_ipykernel.slurm import RESERVED


def read_back(options: o.ProxyOptions) -> o.ProxyOptions:
    """What the proxy (and specs.py) make of the argv these options write."""
    return o.ProxyOptions.from_params(parse_proxy_argv(options.argv()))


def test_defaults_are_defined_once():
    params = {p.name: p.default for p in proxy_command.params}
    assert params["timeout"] == o.DEFAULT_TIMEOUT == o.ConnectionOptions(parse_host("h")).timeout
    assert params["persist"] == o.DEFAULT_PERSIST
    assert params["transport"] == o.DEFAULT_TRANSPORT
    assert params["client_timeout"] == o.DEFAULT_CLIENT_TIMEOUT == protocol.DEFAULT_CLIENT_TIMEOUT
    assert o.parse_grace(params["grace"]) == o.DEFAULT_GRACE == o.Lifetime().grace
    # the keeper (shipped stdlib-only) takes the same constant
    assert keeper.DEFAULT_CLIENT_TIMEOUT is protocol.DEFAULT_CLIENT_TIMEOUT
    defaults = o.ProxyOptions.from_params({"host": "btest"})
    assert defaults == o.ProxyOptions(o.ConnectionOptions(parse_host("btest")))
    assert defaults.argv("py") == ["py", "-m", "ssh_ipykernel", "--host", "btest", "-f", "{connection_file}"]


def test_values_are_typed():
    opts = o.ProxyOptions.from_params({
        "host": "u@h:2200", "env": ("A=1", "B=x=y", "A=2"), "grace": "2h", "kernel_cmd": "k -f {connection_file}",
        "connection_file": "/run/kernel-1.json",
    })
    assert opts.host == parse_host("u@h:2200")
    assert dict(opts.env) == {"A": "2", "B": "x=y"}
    assert opts.lifetime.grace == 7200.0
    assert opts.launch.kernel_cmd == ("k", "-f", "{connection_file}")
    assert o.ProxyOptions.from_params({"host": "h", "grace": "never"}).lifetime.grace is None


def test_a_kernelspec_argv_keeps_what_the_user_wrote():
    opts = o.ProxyOptions.from_params({
        "host": "ssh://u@h:2", "python": "~/env", "ssh_config": None, "timeout": 12.5, "env": ("E={x} 'q'",),
        "sudo": True, "grace": " 2h ", "persist": 600.0, "transport": "paramiko", "workdir": "~",
        "kernel_cmd": "R --slave -e 'IRkernel::main()' --args {connection_file}", "pre_command": "module load x",
    })
    assert opts.argv("/py") == [
        "/py", "-m", "ssh_ipykernel", "--host", "ssh://u@h:2", "--python=~/env", "--timeout", "12.5",
        "--env", "E={x} 'q'", "--sudo", "--persist", "600", "--transport", "paramiko",
        "--kernel-cmd", "R --slave -e 'IRkernel::main()' --args {connection_file}", "--workdir=~",
        "--pre-command", "module load x", "--grace", "2h", "-f", "{connection_file}",
    ]


@pytest.mark.parametrize("text, written", [("1h", None), ("60m", "60m"), (" 1h", "1h"), ("never", "never"), ("0", "0")])
def test_grace_is_written_as_given_unless_it_is_the_default(text, written):
    assert o.Lifetime(o.parse_grace(text), grace_text=text).written_grace() == written


@pytest.mark.parametrize("seconds, text", [(3600.0, "1h"), (5400.0, "90m"), (172800.0, "2d"), (0.0, "0"),
                                           (61.0, "61"), (1.5, "1.5"), (None, "never")])
def test_format_duration_reads_back(seconds, text):
    assert o.format_duration(seconds) == text
    assert o.parse_grace(text) == seconds


def test_a_model_built_in_code_writes_canonical_values():
    launch = o.LaunchOptions(kernel_cmd=("julia", "-i", "{connection_file}"))
    opts = o.ProxyOptions(o.ConnectionOptions(parse_host("h")), launch=launch, lifetime=o.Lifetime(grace=5400.0))
    argv = opts.argv("py")
    assert argv[argv.index("--kernel-cmd") + 1] == "julia -i '{connection_file}'"
    assert argv[argv.index("--grace") + 1] == "90m"
    back = read_back(opts)
    assert (back.launch.kernel_cmd, back.lifetime.grace) == (launch.kernel_cmd, 5400.0)


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f"), min_size=1,
               max_size=12).filter(lambda s: s.strip() != "")
#: Values that test the --env reading rule: spaces before NAME=, quotes, backslashes, $ and newlines.
ENV_VALUES = st.lists(st.sampled_from([" ", "\t", "\n", "B=", "b_2=", "=", "'", '"', "\\", "$HOME", "x", "é", "{x}", "#"])
                      | st.text(max_size=3).filter(lambda s: "\0" not in s), max_size=8).map("".join)
ARGS = st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6), max_size=3)


@st.composite
def proxy_params(draw: st.DrawFn) -> dict:
    params = {
        "host": draw(st.sampled_from(["btest", "u@h", "h:2222", "ssh://u@h:22", "[::1]:22", "a.b-c", "::1"])),
        "python": draw(st.none() | TEXT | TEXT.map(lambda s: "~/" + s)),
        "timeout": draw(st.integers(2, 2000).map(lambda n: n / 2)),
        "env": tuple(o.write_env_item(k, v) for k, v in draw(st.dictionaries(NAMES, ENV_VALUES, max_size=3)).items()),
        "sudo": draw(st.booleans()),
        "grace": draw(st.sampled_from(["1h", "never", "0", "600", "30m", "2d", "1.5h", "90S"])),
        "persist": draw(st.integers(2, 2000).map(lambda n: n / 2)),
        "transport": draw(st.sampled_from(["auto", "openssh", "paramiko"])),
        "client_timeout": draw(st.sampled_from([30.0, 5.0, 2.5])),
        "workdir": draw(st.none() | TEXT | st.just("~")),
        "pre_command": draw(st.none() | TEXT),
        "warm": draw(st.sampled_from(["10m", "600", "off", "OFF", "0", "1h", "90s", "2.5m"])),
    }
    if not params["sudo"] and draw(st.booleans()):
        # sbatch options as a user writes them: words with quotes, spaces, ~ and $ inside values.
        words = draw(st.lists(st.sampled_from(["--partition", "-p", "--time=2:00:00", "--gres", "gpu:1", "-A",
                                                "proj x", "--comment=$HOME ~/a 'q'", "-c4"])
                              | TEXT.filter(lambda w: w.split("=")[0] not in RESERVED), max_size=5))
        params["slurm"] = shlex.join(["--partition", *words])
        params["queue_timeout"] = draw(st.none() | st.sampled_from(["600", "30m", "2h"]))
    kind = draw(st.sampled_from(["ipykernel", "remote", "cmd"]))
    if kind == "remote":
        params["remote_kernel"] = draw(st.from_regex(r"[A-Za-z0-9._-]{1,10}", fullmatch=True))
    elif kind == "cmd":
        args = draw(ARGS)
        params["kernel_cmd"] = shlex.join([*args, "{connection_file}", *draw(ARGS)])
    return params


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=proxy_params())
def test_argv_round_trip(params):
    """What manage add writes, the proxy (and list/show/check) parse back to the same options."""
    opts = o.ProxyOptions.from_params(params)
    argv = opts.argv()
    assert argv[:3] == [sys.executable, "-m", "ssh_ipykernel"] and argv[-2:] == ["-f", "{connection_file}"]
    assert not any(a.startswith("~") for a in argv), "jupyter_client would expand ~ locally"
    back = read_back(opts)
    assert dict(back.env) == dict(opts.env)
    assert back.lifetime.grace == opts.lifetime.grace
    assert back.launch.warm == opts.launch.warm == o.parse_warm(params["warm"])
    assert back.launch.kernel_cmd_text == opts.launch.kernel_cmd_text
    assert back.slurm == opts.slurm and back.queue_timeout_text == opts.queue_timeout_text
    assert back.argv() == argv
    if params["grace"] == o.DEFAULT_GRACE_TEXT or params["grace"] == opts.lifetime.written_grace():
        assert back == opts


def test_ssh_config_is_made_absolute_and_must_exist(tmp_path, monkeypatch):
    (tmp_path / "cfg").write_text("Host x\n")
    monkeypatch.chdir(tmp_path)
    assert o.ProxyOptions.from_params({"host": "h", "ssh_config": "cfg"}).connection.ssh_config == str(tmp_path / "cfg")
    with pytest.raises(o.UsageError, match="no such file"):
        o.ProxyOptions.from_params({"host": "h", "ssh_config": "missing"})
    # a kernelspec read back for `check NAME` leaves a missing file to ssh (its resolve step says so)
    kept = o.ProxyOptions.from_params({"host": "h", "ssh_config": "/gone/cfg"}, vet_ssh_config=False)
    assert kept.connection.ssh_config == "/gone/cfg"


def test_the_proxy_maps_the_local_connection_file_back_into_kernel_cmd(tmp_path):
    local = str(tmp_path / "kernel-1.json")
    opts = o.ProxyOptions.from_params({"host": "h", "kernel_cmd": f"k --f={local}", "connection_file": local})
    assert opts.launch.kernel_cmd == ("k", "--f={connection_file}")
    assert opts.connection_file == local


def test_connect_and_the_proxy_build_the_same_transport(tmp_path, monkeypatch):
    """One recipe (transport.build_transport): connect no longer drops --persist."""
    from ssh_ipykernel.connect import Connector
    from ssh_ipykernel.proxy import Proxy

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    connection = o.ConnectionOptions(parse_host("btest"), ssh_config=None, timeout=9, transport="openssh", persist=300)
    proxy = Proxy(o.ProxyOptions(connection, connection_file=str(tmp_path / "kernel-1.json")))
    connector = Connector(o.ConnectOptions(connection, remote_file="/r/kernel.json"))
    for transport in (proxy.new_transport(2.0), connector.new_transport(2.0)):
        try:
            assert type(transport).__name__ == "OpenSSHTransport"
            assert (transport.options.persist, transport.options.connect_timeout) == (300, 2.0)
            assert transport.host == connection.host
        finally:
            transport.close()


@settings(max_examples=400, deadline=None)
@given(name=NAMES, value=ENV_VALUES)
def test_every_env_value_manage_writes_reads_back_exactly(name, value):
    """Whatever dict `manage add` writes, the proxy reads back identically: a value the plain
    NAME=VALUE form would read as 1.x's shell words is written quoted."""
    written = o.write_env_item(name, value)
    assert o.read_env_item(written).variables == ((name, value),)
    assert dict(read_back(o.ProxyOptions(o.ConnectionOptions(parse_host("h")), env={name: value})).env) == {name: value}
    if not o.read_env_item(f"{name}={value}").as_words:
        assert written == f"{name}={value}"  # today's form, unchanged, wherever it is unambiguous


@pytest.mark.parametrize("item, variables, as_words", [
    # ssh_ipykernel 1.x's manage wrote all variables in one argument
    ("VAR1=demo VAR2=abc", {"VAR1": "demo", "VAR2": "abc"}, True),
    ("A='x y' B=\"q $HOME\"", {"A": "x y", "B": "q $HOME"}, True),  # quotes honoured, $ never expanded
    ("A=1\tB=2", {"A": "1", "B": "2"}, True),
    ("A='x B=y'", {"A": "x B=y"}, True),  # the spelling for one value holding " B="
    # everything else is one variable, kept exactly
    ("A=x y", {"A": "x y"}, False),  # "y" is no NAME=VALUE word
    ("E={x} 'q'", {"E": "{x} 'q'"}, False),
    ("C='hello'", {"C": "'hello'"}, False),  # no whitespace: exact (1.x would have removed the quotes)
    ("M=don't B=1", {"M": "don't B=1"}, False),  # not splittable: exact
    ("P=$HOME/bin", {"P": "$HOME/bin"}, False),
    ("A=", {"A": ""}, False),
    ("B=x=y", {"B": "x=y"}, False),
    ("X=; rm -rf / B=2", {"X": "; rm -rf / B=2"}, False),
    ("", {}, False),  # 1.x's add_kernel(env="") wrote --env "": nothing, as there
    (" ", {}, False),
])
def test_env_reading_rule(item, variables, as_words):
    read = o.read_env_item(item)
    assert dict(read.variables) == variables and read.as_words is as_words
    assert (read.note() is not None) is as_words


def test_an_argument_read_as_shell_words_says_so_and_how_to_write_the_other_meaning():
    env, notes = o.read_env(["VAR1=demo VAR2=abc", "X=1 2", "T='tok en'"])
    assert env == {"VAR1": "demo", "VAR2": "abc", "X": "1 2", "T": "tok en"}
    assert notes == (
        "--env VAR1=... holds whitespace and only NAME=VALUE words, so it is read as shell words (ssh_ipykernel "
        "1.x's form; quotes honoured, nothing expanded): 2 variables, VAR1, VAR2; to give VAR1 all the text after "
        "'VAR1=' instead, quote that text inside the argument as a shell would: --env \"VAR1='...'\"",
        "--env T=... holds whitespace and only NAME=VALUE words, so it is read as shell words (ssh_ipykernel "
        "1.x's form; quotes honoured, nothing expanded): one variable, T, its quotes removed; to give T all the "
        "text after 'T=' instead, quote that text inside the argument as a shell would: --env \"T='...'\"",
    )
    assert not any(value in " ".join(notes) for value in ("demo", "abc", "tok"))  # values are never logged
    assert o.parse_env(["VAR1='demo VAR2=abc'"]) == {"VAR1": "demo VAR2=abc"}  # what the note says to write
    opts = o.ProxyOptions.from_params({"host": "h", "env": ("VAR1=demo VAR2=abc",)})
    assert opts.env_notes == notes[:1] and opts == o.ProxyOptions.from_params({"host": "h", "env": ("VAR1=demo", "VAR2=abc")})


@pytest.mark.parametrize("bad, words", [("NOEQUALS", "not VAR=VALUE"), ("1A=x", "valid variable name"),
                                        ("A B=x", "valid variable name"), ("'A=1'", "not VAR=VALUE"),
                                        ("A=x\0", "NUL byte")])
def test_bad_env_is_refused_with_what_to_do(bad, words):
    with pytest.raises(o.UsageError, match=words):
        o.read_env_item(bad)


def test_1x_command_lines_parse():
    """1.x's short options, several words after one --env, and its -s and --file."""
    argv = ["py", "-m", "ssh_ipykernel", "-H", "btest", "-p", "/opt/env", "-t", "10", "-e", "A=1", "B=x y",
            "-s", "--file", "/run/k.json"]
    opts = o.ProxyOptions.from_params(parse_proxy_argv(argv))
    assert (opts.host.spec, opts.python, opts.connection.timeout, opts.sudo) == ("btest", "/opt/env", 10, True)
    assert dict(opts.env) == {"A": "1", "B": "x y"} and opts.connection_file == "/run/k.json"
    # 1.x's manage wrote one argument; an option's value is never taken for --env words
    one = ["py", "-m", "ssh_ipykernel", "--host", "btest", "--python", "/opt/env", "--timeout", "10", "--env",
           "VAR1=demo VAR2=abc", "-f", "{connection_file}"]
    assert dict(o.ProxyOptions.from_params(parse_proxy_argv(one)).env) == {"VAR1": "demo", "VAR2": "abc"}
    assert o.expand_env_words(["--pre-command", "-e", "X=1"], ["--pre-command"]) == ["--pre-command", "-e", "X=1"]
    assert o.expand_env_words(["--env", "-s", "-e", "A=1", "B=2", "C", "--", "-e"]) == [
        "-s", "--env", "A=1", "--env", "B=2", "C", "--", "-e"]
