"""Things a `pip install .` (not editable) depends on, checked without building a wheel."""
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ssh_ipykernel"


def test_every_source_dir_is_a_regular_package():
    # setuptools' find_packages skips directories without __init__.py: the module would be
    # missing from the installed package (an editable install hides this).
    for directory in {p.parent for p in PACKAGE.rglob("*.py")}:
        assert (directory / "__init__.py").exists(), f"{directory} has no __init__.py"


def test_the_proxy_does_not_import_zmq_or_a_kernel_client():
    code = ("import sys, ssh_ipykernel.cli, ssh_ipykernel.proxy; "
            "print(sorted(m for m in ('zmq', 'tornado', 'jupyter_client', 'paramiko') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
