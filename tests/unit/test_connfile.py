"""Port choice of the remote agent (remote/connfile.py): kernels starting at once never share one."""
import json
import os
import socket

from ssh_ipykernel.remote.connfile import PORT_NAMES, free_ports, reserved_ports


def test_free_ports_are_distinct_and_skip_the_ones_to_avoid():
    first = free_ports("127.0.0.1", 5)
    assert len(set(first)) == 5
    again = free_ports("127.0.0.1", 5, avoid=set(first))
    assert len(again) == 5 and not set(again) & set(first)
    for port in again:  # released: the kernel can bind them
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_reserved_ports_are_read_from_other_kernels_files(tmp_path):
    (tmp_path / "kernel-ssh-a-1.json").write_text(json.dumps({name: 40000 + i for i, name in enumerate(PORT_NAMES)}))
    (tmp_path / "kernel-b.json").write_text(json.dumps({"shell_port": 41000}))
    (tmp_path / "kernel-broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"shell_port": 42000}))
    assert reserved_ports(str(tmp_path)) == {40000, 40001, 40002, 40003, 40004, 41000}
    assert reserved_ports(os.path.join(str(tmp_path), "missing")) == set()
