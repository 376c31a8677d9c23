"""Hostile launcher inputs found by issue 15: each is one line before anything starts or is written."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.processes


def launcher(cwd, env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture()
def deep(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100000)
    return tmp_path


@pytest.mark.parametrize("args", [
    ["validate", "deep.json"],
    ["merge", "deep.json", "deep.json", "-o", "merged.json"],
    ["run", "--backend", "ascend", "--rank-table", "deep.json", "--", sys.executable, "-c", "pass"],
], ids=["validate", "merge", "run"])
def test_deeply_nested_rank_table_is_one_line(deep, clean_env, args):
    proc = launcher(deep, clean_env, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "deep.json: JSON nested too deeply" in lines[0]
    assert sorted(p.name for p in deep.iterdir()) == ["deep.json"]


def test_deeply_nested_rank_table_in_doctor_is_one_fail_line(deep, clean_env):
    proc = launcher(deep, clean_env, "doctor", "--rank-table", "deep.json", "--python", "/bin/false")  # fast probe
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stdout + proc.stderr
    failing = [line for line in proc.stdout.splitlines() if "deep.json" in line]
    assert len(failing) == 1 and failing[0].startswith("FAIL") and "JSON nested too deeply" in failing[0]


def test_relative_command_that_workers_cannot_find_is_refused_before_anything(tmp_path, clean_env):
    job = tmp_path / "job.sh"
    job.write_text("#!/bin/sh\nexit 0\n")
    job.chmod(0o755)
    proc = launcher(tmp_path, clean_env, "run", "--backend", "cluster", "-n", "1", "--log-dir", "logs", "--",
                    "./job.sh")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "command './job.sh': a relative path" in lines[0]
    assert str(job) in lines[0] and "--no-chdir" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.sh"]  # no log dir, nothing started
    proc = launcher(tmp_path, clean_env, "run", "--backend", "cluster", "-n", "1", "--log-dir", "logs",
                    "--no-chdir", "--", "./job.sh")
    assert proc.returncode == 0, proc.stderr
