"""Shared test fixtures. Tests run real MindSpore and real processes; nothing is mocked."""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from clusters import clean_environ

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """One compile cache and one CPU kernel build for the session's runs (keyed by graph and by source, so
    runs share them exactly as a user's runs do), never the user's own ~/.cache/mindclip."""
    os.environ["CLIP_COMPILE_CACHE_DIR"] = tempfile.mkdtemp(prefix="clip-compile-cache-")
    os.environ["CLIP_KERNEL_DIR"] = tempfile.mkdtemp(prefix="clip-kernels-")


def pytest_unconfigure(config):
    for name in ("CLIP_COMPILE_CACHE_DIR", "CLIP_KERNEL_DIR"):
        shutil.rmtree(os.environ.pop(name, ""), ignore_errors=True)


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
