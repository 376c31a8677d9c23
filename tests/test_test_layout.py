"""The suite's own layout: helpers shared by tests live in helper modules (clusters.py, training_runs.py,
cifar_files.py, ...), never in test modules; and the conftest guard that keeps `make test-fast` free of
processes fails an unmarked test that starts one."""
import ast
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

import conftest

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set:
    """Top-level names of every module `path` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_of_the_suite_imports_a_test_module():
    modules = sorted(TESTS.rglob("*.py"))
    test_modules = {p.stem for p in modules if p.name.startswith("test_")}
    assert "test_equivalence" in test_modules and len(modules) > 40
    offenders = {str(p.relative_to(TESTS)): sorted(imported_modules(p) & test_modules) for p in modules}
    assert not {k: v for k, v in offenders.items() if v}, \
        "move what these import into a helper module (see tests/training_runs.py, tests/cifar_files.py)"


def forget_the_guards_record(request):
    """This test trips the guard on purpose; drop its record so the test itself passes."""
    del request.node.stash[conftest._violations]


@pytest.mark.parametrize("start", [
    lambda: subprocess.run(["true"]),
    lambda: os.system("true"),
    lambda: os.posix_spawn("/bin/true", ["true"], {}),
    lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
    lambda: multiprocessing.get_context("fork").Process(target=print).start(),
], ids=["subprocess", "os.system", "posix_spawn", "multiprocessing-spawn", "multiprocessing-fork"])
def test_an_unmarked_test_that_starts_a_process_fails(request, start):
    with pytest.raises(pytest.fail.Exception, match=r"started a child process .* not marked `processes`"):
        start()
    forget_the_guards_record(request)


def test_a_caught_refusal_still_fails_the_test(request):
    caught = []
    try:
        subprocess.run([sys.executable, "-c", "print()"])
    except BaseException as refusal:  # code under test may swallow anything
        caught.append(refusal)
    assert len(caught) == 1 and "not marked `processes`" in str(caught[0])
    assert len(request.node.stash[conftest._violations]) == 1
    forget_the_guards_record(request)


def test_the_librarys_own_compiler_run_is_allowed(tmp_path):
    from clip.native import kernels

    assert Path(kernels.build({kernels.DIR_ENV: str(tmp_path)})).is_file()


@pytest.mark.processes
def test_a_marked_test_starts_processes_freely():
    assert subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True).stdout == "ok\n"
