"""Shared test fixtures. Tests run real MindSpore and real processes; nothing is mocked."""
import os
import sys
from pathlib import Path

import pytest

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
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MS_", "RANK_", "DEVICE_", "ASCEND_", "OMPI_", "PMI", "SLURM_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env
