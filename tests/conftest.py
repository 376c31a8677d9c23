"""Shared test fixtures. Tests run real MindSpore and real processes; nothing is mocked."""
import sys
from pathlib import Path

import pytest

from clusters import clean_environ

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture()
def clean_env():
    """The environment a fresh worker would see: no launcher or cluster variables leaking in."""
    return {**clean_environ(), "PYTHONUNBUFFERED": "1"}
