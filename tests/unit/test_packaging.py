"""Things a `pip install .` (not editable) depends on, checked without building a wheel."""
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ssh_ipykernel"


def test_every_source_dir_is_a_regular_package():
    # setuptools' find_packages skips directories without __init__.py: the module would be
    # missing from the installed package (an editable install hides this).
    for directory in {p.parent for p in PACKAGE.rglob("*.py")}:
        assert (directory / "__init__.py").exists(), f"{directory} has no __init__.py"

