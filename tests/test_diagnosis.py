"""Root cause, hangs and console hygiene with real MindSpore CPU clusters under `python -m launcher run`
(tests/jobs/supervised_job.py), plus the pure parts of launcher.diagnosis."""
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import diagnosis, msrun, plan, supervisor, worker
from launcher.errors import ArgumentParser

from clusters import free_port
from jobs.processes import leftovers
from jobs.supervised_job import SLOW_SECONDS

JOB = Path(__file__).resolve().parent / "jobs" / "supervised_job.py"
HANG_LINE = next(i for i, line in enumerate(JOB.read_text().splitlines(), 1) if "the hung rank's line" in line)
PLAIN = Path(__file__).resolve().parent / "jobs" / "plain_hang_job.py"
SLEEP_LINE = next(i for i, line in enumerate(PLAIN.read_text().splitlines(), 1) if "time.sleep(600)" in line)
CALL_LINE = next(i for i, line in enumerate(PLAIN.read_text().splitlines(), 1) if line == "wait_forever()")
RAISE_LINE = next(i for i, line in enumerate(JOB.read_text().splitlines(), 1) if "raise ValueError" in line)


def launch(tmp_path, env, nproc, *job_args, launcher_args=(), timeout=240):
    cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(nproc), "--log-dir",
           str(tmp_path / "logs"), "--grace-period", "1", *launcher_args, "--", sys.executable, str(JOB), "--out", str(tmp_path), *job_args]
    started = time.time()
    proc = subprocess.run(cmd, cwd=tmp_path, env={**env, "GLOG_v": "3"}, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.time() - started


@pytest.mark.processes
def test_raise_on_rank_2_of_4_is_the_root_cause(tmp_path, clean_env):
    proc, _ = launch(tmp_path, clean_env, 4, "--fail-mode", "raise", "--fail-rank", "2")
    exited = time.time()
    assert proc.returncode == 1, proc.stderr
    failed_at = json.loads((tmp_path / "failed_at.json").read_text())["time"]
    assert exited - failed_at < 2.0 + 1.0  # the summary came within 2 s of the failure (+ process exit)
    root = [line for line in proc.stderr.splitlines() if "root cause" in line]
    assert len(root) == 1 and "rank 2" in root[0] and "ValueError: deliberate failure on rank 2" in root[0]
    assert f"supervised_job.py:{RAISE_LINE}" in root[0]
    record = json.loads((tmp_path / "logs" / "failure.json").read_text())
    assert record["reason"] == "failed" and record["root_cause"]["rank"] == 2
    assert record["root_cause"]["error"]["type"] == "ValueError"
    assert record["root_cause"]["error"]["where"].endswith(f"supervised_job.py:{RAISE_LINE}")
    assert all(f["rank"] != 2 for f in record["later_failures"])
    assert leftovers(str(tmp_path)) == []


@pytest.mark.processes
def test_sigkill_is_named_with_its_signal(tmp_path, clean_env):
    proc, _ = launch(tmp_path, clean_env, 2, "--fail-mode", "sigkill", "--fail-rank", "1")
    assert proc.returncode == 137, proc.stderr
    root = [line for line in proc.stderr.splitlines() if "root cause" in line]
    assert len(root) == 1 and "rank 1" in root[0] and "signal SIGKILL" in root[0]
    assert "out-of-memory killer" in root[0]
    record = json.loads((tmp_path / "logs" / "failure.json").read_text())
    assert record["root_cause"]["rank"] == 1 and record["root_cause"]["returncode"] == -signal.SIGKILL


@pytest.mark.processes
def test_hung_rank_is_named_with_its_line_and_everything_stops(tmp_path, clean_env):
    proc, _ = launch(tmp_path, clean_env, 2, "--fail-mode", "hang", "--fail-rank", "1",
                     launcher_args=("--hang-timeout", "15", "--grace-period", "2"))
    exited = time.time()
    hung_at = json.loads((tmp_path / "failed_at.json").read_text())["time"]
    assert proc.returncode == 124, proc.stderr
    assert exited - hung_at < 25
    lines = [line for line in proc.stderr.splitlines() if " hung: " in line]
    assert len(lines) == 1 and "rank 1" in lines[0] and f"supervised_job.py:{HANG_LINE} in hang" in lines[0]
    record = json.loads((tmp_path / "logs" / "failure.json").read_text())
    assert [item["rank"] for item in record["hung"] if item["hung"]] == [1]
    # rank 0 went silent in the same moment, blocked in AllReduce: whichever crossed the timeout first, it is
    # named as waiting, not as the hung one
    waiting = [line for line in proc.stderr.splitlines() if "waiting inside MindSpore" in line]
    assert len(waiting) == 1 and "rank 0" in waiting[0], proc.stderr
    assert leftovers(str(tmp_path)) == []


@pytest.mark.processes
@pytest.mark.parametrize("how", ["plain", "shell wrapper", "SIGUSR1 claimed, not answered"])
def test_hung_plain_python_program_is_shown_at_its_sleeping_line(tmp_path, clean_env, how):
    """Any Python program, none of our helpers: py-spy (a dependency, found beside the launcher's interpreter
    with the venv off PATH) shows where it sleeps, also behind a shell that forks it, and for a worker that
    claims a SIGUSR1 dump but does not answer."""
    job = [sys.executable, str(PLAIN)] + (["--claim-sigusr1"] if how.startswith("SIGUSR1") else [])
    if how == "shell wrapper":
        job = ["/bin/sh", "-c", shlex.join(job) + "; exit $?"]  # `; exit`: the shell forks, it does not exec
    cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", "1", "--hang-timeout", "1",
           "--grace-period", "1", "--log-dir", str(tmp_path / "logs"), "--", *job]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**clean_env, "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 124, proc.stderr
    where = f"{PLAIN}:{SLEEP_LINE} in wait_forever"
    lines = [line for line in proc.stderr.splitlines() if " hung: " in line]
    assert len(lines) == 1 and "rank 0" in lines[0] and f"it was at {where} (its stack (py-spy)" in lines[0], \
        proc.stderr
    hung = json.loads((tmp_path / "logs" / "failure.json").read_text())["hung"]
    assert [(item["rank"], item["hung"], item["line"]) for item in hung] == [(0, True, where)]
    assert hung[0]["stack"][:2] == [where, f"{PLAIN}:{CALL_LINE} in <module>"]
    assert "launcher: py-spy dump of rank 0" in (tmp_path / "logs" / "worker_0.log").read_text()
    assert leftovers(str(tmp_path)) == []


@pytest.mark.processes
def test_ranks_waiting_for_a_slow_rank_are_not_taken_for_hung(tmp_path, clean_env):
    """Rank 0 works longer than the hang timeout (beating) while rank 1 waits in AllReduce, as in clip.train's
    evaluation: rank 1 waits inside beat_while_waiting, so the job is not stopped (without it, rank 1 would be
    named hung at 4 s)."""
    proc, seconds = launch(tmp_path, clean_env, 2, "--fail-mode", "slow", "--fail-rank", "0",
                           launcher_args=("--hang-timeout", "4"))
    assert proc.returncode == 0 and "hung" not in proc.stderr, proc.stderr
    assert seconds > SLOW_SECONDS  # the slow rank did outlast the hang timeout


@pytest.mark.processes
def test_worker_that_never_beats_is_not_watched(tmp_path, clean_env):
    cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", "1", "--hang-timeout", "0.5",
           "--log-dir", str(tmp_path / "logs"), "--", sys.executable, "-c", "import time; time.sleep(3)"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "hung" not in proc.stderr


# ---------------------------------------------------------------- pure parts

def test_root_cause_is_the_earliest_failure():
    late = diagnosis.Failure(0, "rank 0", "w0.log", 105.0, 1, {"type": "RuntimeError", "message": "peer gone",
                                                              "where": "a.py:3", "host": "h", "pid": 9})
    first = diagnosis.Failure(2, "rank 2", "w2.log", 100.0, 1, {"type": "ValueError", "message": "bad",
                                                               "where": "job.py:7", "host": "h", "pid": 7})
    killed = diagnosis.Failure(1, "rank 1", "w1.log", 101.0, -signal.SIGKILL)
    assert diagnosis.root_cause([late, killed, first]) is first
    assert diagnosis.cause_line(first) == "rank 2 on h (pid 7): ValueError: bad, raised at job.py:7"
    assert "signal SIGKILL (exit code 137), often the out-of-memory killer" in diagnosis.cause_line(killed)
    lines = diagnosis.summary(first, [killed, late])
    assert "rank 2" in lines[0] and lines[1].endswith("rank 1 (signal SIGKILL (exit code 137), often the "
                                                      "out-of-memory killer); rank 0 (RuntimeError)")


def test_stack_dump_parsing():
    faulthandler_dump = (
        "Thread 0x00007f1 (most recent call first):\n"
        '  File "/venv/threading.py", line 320 in wait\n\n'
        "Current thread 0x00007f0 (most recent call first):\n"
        '  File "/job/train.py", line 16 in hang\n'
        '  File "/job/train.py", line 27 in misbehave\n')
    assert diagnosis.innermost_frame(faulthandler_dump) == "/job/train.py:16 in hang"
    py_spy = ('Thread 123 (idle): "MainThread"\n    hang (/job/train.py:16)\n    main (/job/train.py:40)\n')
    assert diagnosis.innermost_frame(py_spy) == "/job/train.py:16 in hang"
    # without threading imported py-spy names no thread: the main one has the process's id
    unnamed = ("Process 77: python /job/train.py\nPython v3.11.7 (/usr/bin/python3.11)\n\n"
               "Thread 78 (idle)\n    wait (/usr/lib/threading.py:320)\n    worker (/job/train.py:9)\n"
               "Thread 77 (idle)\n    hang (/job/train.py:16)\n    <module> (/job/train.py:40)\n"
               "Thread 79 (active)\n    poll (/job/io.py:3)\n")
    assert diagnosis.stack_frames(unnamed) == ["/job/train.py:16 in hang", "/job/train.py:40 in <module>"]
    assert diagnosis.innermost_frame("no stack here") is None


def test_error_record_and_decorator(tmp_path, monkeypatch):
    path = tmp_path / "error.json"
    monkeypatch.setenv(worker.ERROR_FILE, str(path))
    monkeypatch.setenv(worker.RANK, "3")

    @worker.record
    def broken():
        raise KeyError("missing")

    with pytest.raises(KeyError):
        broken()
    record = diagnosis.read_error_file(str(path))
    assert record["rank"] == "3" and record["type"] == "KeyError" and "test_diagnosis.py:" in record["where"]
    assert "Traceback" in record["traceback"] and record["exit_code"] == 1


@pytest.mark.processes
@pytest.mark.parametrize("argv", [
    ["clip.eval", "--set", "data.eval.type=cifar100", "--set", "data.eval.path=/nonexistent/cifar"],
    ["clip.predict", "--checkpoint", "w.ckpt", "--image", "x.png", "--labels", "cat,cat"],
    ["clip", "--run_mode", "predict"],
], ids=["clip.eval", "clip.predict", "clip"])
def test_every_clip_entry_point_writes_the_error_file(tmp_path, clean_env, argv):
    """Like clip.train, the other entry points a launcher may run record a failure for the root-cause summary
    (a user error too: still one `error:` line and exit 2)."""
    path = tmp_path / "error_3.json"
    env = {**clean_env, worker.ERROR_FILE: str(path), worker.RANK: "3"}
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    record = diagnosis.read_error_file(str(path))
    assert record["rank"] == "3" and record["type"] == "UserError" and line == f"error: {record['message']}"
    assert record["exit_code"] == proc.returncode


def test_a_rank_waiting_for_a_peer_beats_only_while_it_waits(tmp_path, monkeypatch):
    """The other ranks while rank 0 evaluates: a thread keeps their heartbeat fresh during the wait, for at
    most `limit` seconds, and stops with the wait."""
    import threading

    path = tmp_path / "heartbeat_1"
    monkeypatch.setenv(worker.HEARTBEAT_FILE, str(path))
    monkeypatch.setattr(worker, "_HEARTBEAT_EVERY", 0.05)

    def touched_within(seconds: float) -> bool:
        os.utime(path, (0, 0))
        time.sleep(seconds)
        return path.stat().st_mtime > 0

    with worker.beat_while_waiting(limit=30):
        time.sleep(0.1)
        assert path.exists() and touched_within(0.2) and touched_within(0.2)
    assert not touched_within(0.2)
    with worker.beat_while_waiting(limit=0.2):
        time.sleep(0.3)
        assert not touched_within(0.2)  # past its limit, a wait is watched again
    monkeypatch.delenv(worker.HEARTBEAT_FILE)
    threads = threading.active_count()
    with worker.beat_while_waiting(limit=30):
        assert threading.active_count() == threads  # outside a launcher job: nothing runs


# ---------------------------------------------------------------- msrun and torchrun command lines

@pytest.mark.processes
def test_msrun_command_line_runs_the_two_worker_job(tmp_path, clean_env):
    job = Path(__file__).resolve().parent / "jobs" / "collective_job.py"
    cmd = [sys.executable, "-m", "launcher", "msrun", "--worker_num", "2", "--local_worker_num", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--node_rank", "0", "--log_dir",
           str(tmp_path / "logs"), "--join", "True", "--cluster_time_out", "120", "--bind_core", "False",
           "--tail_worker_log", "0", str(job), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**clean_env, "GLOG_v": "3"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads((tmp_path / f"result_{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in results] == [2, 2] and results[0]["allreduce"] == [3.0, 30.0]
    assert "[rank 0] collective_job: rank 0 done" in proc.stdout and "[rank 1]" not in proc.stdout
    assert sorted(p.name for p in (tmp_path / "logs").glob("worker_*.log")) == ["worker_0.log", "worker_1.log"]


def test_msrun_options_without_effect_say_so():
    parser = ArgumentParser(prog="msrun")
    msrun.add_arguments(parser)
    run_args, notes, env = msrun.translate(parser.parse_args(
        ["--worker_num", "4", "--local_worker_num", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
         "--worker_log_name", "w_{ip}", "--bind_core", "True", "train.py", "--lr", "0.1"]), python="/py")
    assert run_args == ["--backend", "cluster", "--nproc", "2", "--nnodes", "2", "--node-rank", "1",
                        "--master-addr", "10.0.0.1", "--master-port", "8118", "--log-dir", ".", "--no-chdir",
                        "--tee", "all", "--bind-cores", "--", "/py", "train.py", "--lr", "0.1"]
    assert notes == ["--join False has no effect: this launcher always waits for the job and returns its result",
                     "--worker_log_name w_{ip} has no effect here"]
    assert env == {"MS_TOPO_TIMEOUT": "600"}


@pytest.mark.processes
def test_torchrun_spellings(tmp_path, clean_env):
    cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "--nproc-per-node", "2", "--nnodes", "1",
           "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", "29555", "--standalone",
           "--dry-run", "--log-dir", str(tmp_path / "logs"), "--", sys.executable, "-c", "pass"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("MS_WORKER_NUM=2") == 3 and "MS_SCHED_PORT=29555" in proc.stdout
    assert proc.stderr.splitlines() == ["launcher: --standalone has no effect here (one node with a local "
                                        "scheduler on a free port is the default)"]


@pytest.mark.processes
def test_mindspore_info_lines_stay_in_the_worker_log(tmp_path):
    code = ("print('[INFO] DISTRIBUTED(31931,7f1e,python):2026-11-30-20:37:00.373.463 [tcp_client.cc:367] "
            "Start] Event base dispatch success!'); print('step 1 loss 0.5')")
    specs = [plan.WorkerSpec("worker", 0, (sys.executable, "-c", code), str(tmp_path), {}, None,
                             str(tmp_path / "worker_0.log"))]
    out, err = io.StringIO(), io.StringIO()
    assert supervisor.run_attempts(lambda a: specs, max_restarts=0, grace=1.0, timeout=None, tee_ranks=[0],
                                   out=out, err=err) == 0
    assert out.getvalue().splitlines() == ["[rank 0] step 1 loss 0.5"]
    assert "Event base dispatch success!" in (tmp_path / "worker_0.log").read_text()
