"""Prerequisite checks and artifact paths shared by the front-end tests (importable from them,
unlike conftest.py)."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Where failing tests leave screenshots and server logs (gitignored).
ARTIFACTS = REPO / "test-artifacts"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(what: str) -> None:
    """Skip locally, fail under CI=true: CI must not go green without running the front ends."""
    if in_ci():
        pytest.fail(f"front-end test prerequisite missing under CI=true: {what} "
                    "(tools/setup.sh installs it)", pytrace=False)
    pytest.skip(f"front-end test prerequisite missing: {what} (run tools/setup.sh)")


def require_modules(*names: str) -> None:
    """The PyPI packages of the ``frontend`` extra that a test imports."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        unavailable(f"python modules {', '.join(missing)} (pip install -e '.[frontend]')")


def require_executables(*paths: str) -> None:
    """Programs from Debian packages (chromium, chromium-driver)."""
    missing = [path for path in paths if not shutil.which(path)]
    if missing:
        unavailable(f"{', '.join(missing)} (apt-get install chromium chromium-driver)")
