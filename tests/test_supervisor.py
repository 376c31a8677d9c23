"""Supervision with real processes (plain Python children, no MindSpore: fast): fail fast, grace then
SIGKILL, process groups, parent death, signals to the launcher, restarts, tee, core binding, env.log."""
import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from launcher import plan, supervisor
from launcher.supervisor import run_attempts

from jobs.processes import leftovers


def spec(tmp_path, rank, code, cores=None, log_dir=None, env=None):
    """A worker running `python -c code <tmp_path> <rank>` in <tmp_path>/rank_<rank>."""
    log_dir = log_dir or str(tmp_path)
    return plan.WorkerSpec(role="worker", rank=rank, argv=(sys.executable, "-c", textwrap.dedent(code),
                                                           str(tmp_path), str(rank)),
                           cwd=plan.worker_dir(str(tmp_path), rank), env=env or {"JOB_RANK": str(rank)},
                           cores=cores, log_path=plan.worker_log(log_dir, rank),
                           env_log=os.path.join(plan.worker_dir(str(tmp_path), rank), "env.log"))


def run(specs_for, max_restarts=0, grace=2.0, timeout=None, tee=()):
    out, err = io.StringIO(), io.StringIO()
    code = run_attempts(specs_for, max_restarts=max_restarts, grace=grace, timeout=timeout, tee_ranks=tee,
                        out=out, err=err)
    return code, out.getvalue(), err.getvalue()


SLEEP = "import time; time.sleep(120)"


@pytest.mark.processes
def test_success_tee_env_log_and_working_dirs(tmp_path):
    code = """
        import os, sys
        print("hello from", sys.argv[2], os.environ["JOB_RANK"], os.path.basename(os.getcwd()))
        print("partial line without newline", end="")
    """
    specs = [spec(tmp_path, r, code) for r in range(2)]
    rc, out, err = run(lambda attempt: specs, tee=[1])
    assert rc == 0, err
    assert "[rank 1] hello from 1 1 rank_1" in out.splitlines()
    assert "[rank 1] partial line without newline" in out.splitlines()
    assert "rank 0" not in out
    assert "hello from 0 1" not in (tmp_path / "worker_0.log").read_text()
    assert "hello from 0 0 rank_0" in (tmp_path / "worker_0.log").read_text()
    env_log = (tmp_path / "rank_0" / "env.log").read_text().splitlines()
    assert "JOB_RANK=0" in env_log and any(line.startswith("PATH=") for line in env_log)


@pytest.mark.processes
@pytest.mark.parametrize("code, expected_rc, expected_text", [
    ("import sys; print('boom before exit'); sys.exit(3)", 3, "rank 1 failed with exit code 3"),
    ("raise ValueError('deliberate')", 1, "ValueError: deliberate"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137, "signal SIGKILL (exit code 137)"),
])
def test_first_failure_stops_everyone_fast(tmp_path, code, expected_rc, expected_text):
    specs = [spec(tmp_path, 0, SLEEP), spec(tmp_path, 1, "import time; time.sleep(0.5)\n" + code),
             spec(tmp_path, 2, SLEEP)]
    started = time.monotonic()
    rc, _, err = run(lambda attempt: specs)
    assert rc == expected_rc
    assert time.monotonic() - started < 10
    assert expected_text in err and "rank 1 failed" in err
    assert str(tmp_path / "worker_1.log") in err
    assert leftovers(str(tmp_path)) == []


@pytest.mark.processes
def test_sigterm_ignored_means_sigkill_after_grace_and_orphans_die(tmp_path):
    stubborn = """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)", sys.argv[1]])
        open(sys.argv[1] + "/child.pid", "w").write(str(child.pid))
        time.sleep(120)
    """
    failing = """
        import os, sys, time
        while not os.path.exists(sys.argv[1] + "/child.pid"):
            time.sleep(0.05)
        time.sleep(0.3)
        sys.exit(4)
    """
    specs = [spec(tmp_path, 0, stubborn), spec(tmp_path, 1, failing)]
    started = time.monotonic()
    rc, _, err = run(lambda attempt: specs, grace=1.0)
    elapsed = time.monotonic() - started
    assert rc == 4 and "rank 1 failed with exit code 4" in err
    assert 1.0 <= elapsed < 10
    child = int((tmp_path / "child.pid").read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert leftovers(str(tmp_path)) == []


@pytest.mark.processes
def test_timeout_stops_the_group(tmp_path):
    rc, _, err = run(lambda attempt: [spec(tmp_path, 0, SLEEP)], timeout=1.0)
    assert rc == 124 and "timeout after 1 s" in err
    assert leftovers(str(tmp_path)) == []


@pytest.mark.processes
def test_max_restarts_reruns_the_whole_group_with_own_log_dirs(tmp_path):
    code = """
        import os, sys
        marker = os.path.join(sys.argv[1], "marker")
        print("attempt sees marker:", os.path.exists(marker))
        if sys.argv[2] == "1" and not os.path.exists(marker):
            open(marker, "w").close()
            sys.exit(3)
    """

    def specs_for(attempt):
        logs = plan.attempt_log_dir(str(tmp_path), attempt, max_restarts=1)
        return [spec(tmp_path, r, code, log_dir=logs) for r in range(2)]

    rc, _, err = run(specs_for, max_restarts=1)
    assert rc == 0, err
    assert "restarting the whole group (restart 1 of 1)" in err
    assert "marker: False" in (tmp_path / "attempt_0" / "worker_1.log").read_text()
    assert "marker: True" in (tmp_path / "attempt_1" / "worker_0.log").read_text()


@pytest.mark.processes
def test_restarts_exhausted_returns_the_failure(tmp_path):
    specs_for = lambda attempt: [spec(tmp_path, 0, "import sys; sys.exit(7)",  # noqa: E731
                                      log_dir=plan.attempt_log_dir(str(tmp_path), attempt, 2))]
    rc, _, err = run(specs_for, max_restarts=2)
    assert rc == 7 and err.count("rank 0 failed with exit code 7") == 3
    assert (tmp_path / "attempt_2" / "worker_0.log").exists()


@pytest.mark.processes
def test_cores_are_bound_in_the_child(tmp_path):
    cores = sorted(psutil.Process().cpu_affinity())
    blocks = plan.split_cores(cores, 2)
    code = "import os; print('affinity', sorted(os.sched_getaffinity(0)))"
    rc, _, err = run(lambda attempt: [spec(tmp_path, r, code, cores=blocks[r]) for r in range(2)])
    assert rc == 0, err
    for rank in range(2):
        assert f"affinity {sorted(blocks[rank])}" in (tmp_path / f"worker_{rank}.log").read_text()


DRIVER = """
import sys
from launcher import plan, supervisor
root = sys.argv[1]
code = "import time; open(__import__('sys').argv[1] + '/started_' + __import__('sys').argv[2], 'w').close(); time.sleep(120)"
specs = [plan.WorkerSpec("worker", r, (sys.executable, "-c", code, root, str(r)), root, {}, None,
                         f"{root}/worker_{r}.log") for r in range(2)]
sys.exit(supervisor.run_attempts(lambda a: specs, max_restarts=0, grace=2.0, timeout=None, tee_ranks=[]))
"""


def start_driver(tmp_path, clean_env):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], env=clean_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"started_{r}").exists() for r in range(2)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    return proc


@pytest.mark.processes
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_launcher_reaches_every_worker(tmp_path, clean_env, signum):
    proc = start_driver(tmp_path, clean_env)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum
    assert f"received {signal.Signals(signum).name}" in err
    assert leftovers(str(tmp_path)) == []


@pytest.mark.processes
def test_launcher_killed_with_sigkill_takes_workers_along(tmp_path, clean_env):
    proc = start_driver(tmp_path, clean_env)
    proc.kill()
    proc.communicate(timeout=30)
    assert leftovers(str(tmp_path), settle=5.0) == []


@pytest.mark.processes
def test_unstartable_process_stops_the_ones_already_started(tmp_path):
    missing = plan.WorkerSpec("worker", 1, (str(tmp_path / "missing_program"),), str(tmp_path), {}, None,
                              str(tmp_path / "worker_1.log"))
    with pytest.raises(supervisor.UserError, match="cannot start rank 1: .*missing_program"):
        run(lambda attempt: [spec(tmp_path, 0, SLEEP), missing])
    assert leftovers(str(tmp_path)) == []


def test_exit_code_conventions():
    assert supervisor.exit_code_of(0) == 0
    assert supervisor.exit_code_of(3) == 3
    assert supervisor.exit_code_of(-signal.SIGKILL) == 137
    assert supervisor.describe_returncode(-signal.SIGTERM) == "signal SIGTERM (exit code 143)"
