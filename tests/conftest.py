"""Shared test fixtures, and the rule that splits the suite into two tiers.

Tests run real MindSpore and real processes; nothing is mocked.

Two tiers. A test that starts a child process (python, the launcher, a script, a cluster from clusters.py, a job
from jobs/, mpirun, the demo, a fake tool on PATH, MindSpore data workers...) carries the `processes` marker:
`pytestmark = pytest.mark.processes` when the whole module does, `@pytest.mark.processes` on the test otherwise.
`make test-fast` runs the tests without it, the edit-test loop in under 3 minutes on 2 cores; it also leaves
out the few in-process tests marked `slow` (over ~10 s of CPU each: big-model parity, recompute gradients), so
it is `-m "not processes and not slow"`. `make test` runs everything.

The guard makes the marker impossible to forget: while an unmarked test (its set-up, call or tear-down, so
module fixtures count) runs, starting a child process fails the test with a message saying to mark it. It
watches `subprocess.Popen`, `os.fork`/`forkpty`/`posix_spawn`/`posix_spawnp`/`system` and
`_posixsubprocess.fork_exec` (multiprocessing's spawn and forkserver), so everything built on them is covered.
It is a guard, not a mock: the wrappers pass straight through to the real calls for marked tests, and the
unmarked ones only see a failure.

Two exceptions. Processes MindSpore's own Python code starts to inspect the machine (`lscpu`, when its
runtime first binds threads in a process), which are part of importing and running it at all. And processes
started by the library's own code in clip/native/ (today: g++, which builds the fused
CPU kernels and the shared-memory transport and reports its version for their build key). Every in-process CPU
model or training test needs those libraries, so the build is part of what the library does in-process; it
takes about a second per library and runs once per session (`CLIP_KERNEL_DIR` is one directory for the
session), or again only when a test asks for a fresh build. Processes MindSpore starts from C++ are invisible to the guard; MindSpore's Python-side data
workers (`num_workers > 1`) are not, and count as processes.
"""
import _posixsubprocess
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clusters import clean_environ

REPO = Path(__file__).resolve().parent.parent
NATIVE = str(REPO / "clip" / "native") + os.sep
# MindSpore's own Python code asks the system about itself (`lscpu` when its runtime first binds threads)
MINDSPORE = os.path.join(os.path.dirname(os.path.dirname(pytest.__file__)), "mindspore") + os.sep
MARKER = "processes"


SESSION_DIRS = ("CLIP_COMPILE_CACHE_DIR", "CLIP_KERNEL_DIR")


def pytest_configure(config):
    """One compile cache and one CPU kernel build for the session's runs (keyed by graph and by source, so
    runs share them exactly as a user's runs do), never the user's own ~/.cache/mindclip. Under pytest-xdist
    (`make test` runs three workers) the controller makes them and its workers inherit them, so each graph
    compiles once per suite, not once per worker; the cache's and the build's own locks make sharing safe."""
    if not _is_xdist_worker(config):
        os.environ["CLIP_COMPILE_CACHE_DIR"] = tempfile.mkdtemp(prefix="clip-compile-cache-")
        os.environ["CLIP_KERNEL_DIR"] = tempfile.mkdtemp(prefix="clip-kernels-")
    _install_guard()


def pytest_unconfigure(config):
    if not _is_xdist_worker(config):
        for name in SESSION_DIRS:
            shutil.rmtree(os.environ.pop(name, ""), ignore_errors=True)


def _is_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


# The modules that take longest, longest first (measured with --durations): the workers take modules in
# collection order, so starting with these leaves the many short ones to fill in at the end instead of one
# long module running alone after everything else finished.
LONGEST_FIRST = ("test_equivalence", "test_soak", "test_demo", "test_resume", "test_finetune_runs",
                 "test_compile_cache", "test_accumulate", "test_data_formats", "test_precision", "test_eval_cli",
                 "test_patch_dropout", "test_run_cluster", "test_distributed", "test_diagnosis", "test_eval_benchmark")


def pytest_collection_modifyitems(session, config, items):
    """Longest modules first; the order inside each module stays as written (its fixtures rely on it)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.module.__name__, len(rank)), position[id(item)]))


# ---------------------------------------------------------------- the process guard

_guarded = None  # the unmarked test item whose phase is running, else None


def _started_by_the_library() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith((NATIVE, MINDSPORE)):
            return True
        frame = frame.f_back
    return False


def _refuse(what: str) -> None:
    item = _guarded
    if item is None or _started_by_the_library():
        return
    message = (f"{item.nodeid} started a child process ({what}) but is not marked `{MARKER}`: add "
               f"@pytest.mark.{MARKER} to the test (or `pytestmark = pytest.mark.{MARKER}` to a module whose tests "
               f"all start processes); `make test-fast` runs only unmarked tests (see tests/conftest.py)")
    item.stash.setdefault(_violations, []).append(message)
    pytest.fail(message, pytrace=True)


def _guard(owner, name: str, describe) -> None:
    """Replace owner.name with a guarded call. The guard takes the original's name and module and replaces it
    there too (os.system is posix.system), so it pickles by reference exactly as the original does: the
    malicious-pickle tests build their payloads from os.system."""
    original = getattr(owner, name)
    if hasattr(original, "__wrapped__"):
        return

    @functools.wraps(original)
    def guard(*args, **kwargs):
        if _guarded is not None:
            _refuse(describe(*args, **kwargs))
        return original(*args, **kwargs)

    setattr(owner, name, guard)
    home = sys.modules.get(getattr(original, "__module__", None) or "")
    if home is not None and home is not owner and getattr(home, name, None) is original:
        setattr(home, name, guard)


def _command(argv) -> str:
    if isinstance(argv, (str, bytes, os.PathLike)):
        return os.fsdecode(argv)[:200]
    return " ".join(os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv)[:200]


def _install_guard() -> None:
    _guard(subprocess.Popen, "_execute_child", lambda self, args, *rest, **kw: _command(args))
    for name in ("fork", "forkpty"):
        _guard(os, name, lambda name=name: f"os.{name}()")
    for name in ("posix_spawn", "posix_spawnp"):
        _guard(os, name, lambda path, argv, *rest, **kw: _command(argv))
    _guard(os, "system", lambda command: f"os.system({command!r})")
    _guard(_posixsubprocess, "fork_exec", lambda args, *rest: _command(args))


_violations = pytest.StashKey[list]()


def _guarded_phase(item):
    """Guard one phase of `item` unless it is marked."""
    global _guarded
    outer, _guarded = _guarded, None if item.get_closest_marker(MARKER) else item
    try:
        return (yield)
    finally:
        _guarded = outer


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A phase whose code caught the guard's failure still fails."""
    report = yield
    violations = item.stash.get(_violations, [])
    if violations:
        del item.stash[_violations]
        if report.passed:
            report.outcome, report.longrepr = "failed", violations[0]
    return report


# ---------------------------------------------------------------- fixtures

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
