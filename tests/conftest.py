"""Top-level test configuration.

Command-line options live here, not in tests/integration/conftest.py: pytest
only calls pytest_addoption in conftests it loads at startup, and a bare
``pytest --docker-hosts`` (testpaths = tests) loads tests/conftest.py but not
the one in tests/integration, so the option would be "unrecognized" there.
"""
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--docker-hosts`` (see docker/README.md)."""
    parser.getgroup("ssh-ipykernel").addoption(
        "--docker-hosts", action="store_true", default=False,
        help="run the integration tests against the Docker test host in docker/ "
             "(pytest-docker) instead of network-namespace hosts")
