import json

import pytest

from ssh_ipykernel.connection import kernel_id_from_path, load_connection_file
from ssh_ipykernel.exceptions import ConnectionFileError

GOOD = {"shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "control_port": 50004,
        "hb_port": 50005, "ip": "127.0.0.1", "key": "k", "transport": "tcp",
        "signature_scheme": "hmac-sha256", "kernel_name": "ssh_btest"}


def write(tmp_path, content):
    p = tmp_path / "kernel-1234-abcd.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


def test_good_file(tmp_path):
    info = load_connection_file(write(tmp_path, GOOD))
    assert info["shell_port"] == 50001 and info["key"] == "k" and info["ip"] == "127.0.0.1"


def test_localhost_means_ipv4_loopback(tmp_path):
    assert load_connection_file(write(tmp_path, dict(GOOD, ip="localhost")))["ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        (dict(GOOD, hb_port=None), "hb_port is None"),
        (dict(GOOD, hb_port=0), "hb_port is 0"),
        (dict(GOOD, hb_port="50005"), "hb_port is '50005'"),
        (dict(GOOD, hb_port=True), "hb_port is True"),
        (dict(GOOD, hb_port=50001), "share the same port"),
        (dict(GOOD, transport="ipc"), "only 'tcp'"),
        (dict(GOOD, ip="0.0.0.0"), "127.0.0.1 only"),
        (dict(GOOD, key=5), "key is not a string"),
        (dict(GOOD, signature_scheme="none; rm -rf"), "signature_scheme"),
    ],
)
def test_malformed_files_are_explained(tmp_path, content, words):
    with pytest.raises(ConnectionFileError) as e:
        load_connection_file(write(tmp_path, content))
    assert words in str(e.value)
    assert "connection file" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConnectionFileError) as e:
        load_connection_file(str(tmp_path / "nope.json"))
    assert "does not exist" in str(e.value)


@pytest.mark.parametrize(
    "path, kid",
    [
        ("/run/jupyter/kernel-0a1b-2c3d.json", "0a1b-2c3d"),
        ("/tmp/conn.json", "conn"),
        ("/tmp/my conn;rm.json", "my_conn_rm"),
    ],
)
def test_kernel_id(path, kid):
    assert kernel_id_from_path(path) == kid
