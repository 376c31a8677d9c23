"""Real MindSpore CPU clusters started through `python -m launcher run`: collective values, failures of
every kind ending the job fast with nothing left behind, signals, restarts, two nodes on loopback, and
the user scripts' argument checks."""
import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from launcher.plan import split_cores
from launcher.run import free_port

from clusters import parse_dry_run
from jobs.processes import leftovers
from training_runs import TINY_MODEL

pytestmark = pytest.mark.processes

JOB = Path(__file__).resolve().parent / "jobs" / "collective_job.py"
TIMEOUT = 180


def launcher_cmd(python_exe, tmp_path, nproc, *options, job_args=()):
    return [python_exe, "-m", "launcher", "run", "--backend", "cluster", "-n", str(nproc),
            "--log-dir", str(tmp_path / "logs"), *options, "--",
            python_exe, str(JOB), "--out", str(tmp_path), *job_args]


def launch(python_exe, env, tmp_path, nproc, *options, job_args=()):
    return subprocess.run(launcher_cmd(python_exe, tmp_path, nproc, *options, job_args=job_args), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)


def results(tmp_path, world):
    return [json.loads((tmp_path / f"result_{rank}.json").read_text()) for rank in range(world)]


def check_collectives(tmp_path, world):
    expected_sum = [world * (world + 1) / 2, 10 * world * (world + 1) / 2]
    for rank, result in enumerate(results(tmp_path, world)):
        assert (result["rank"], result["world_size"]) == (rank, world)
        assert result["allreduce"] == expected_sum
        assert result["allgather"] == [float(r) for r in range(world)]
        assert result["extra"] == 2.0 * world
        assert result["env"]["MS_NODE_ID"] == str(rank) and result["env"]["MS_WORKER_NUM"] == str(world)


def test_two_workers_collectives_tee_and_bound_cores(python_exe, clean_env, tmp_path):
    run = launch(python_exe, clean_env, tmp_path, 2, "--tee", "0", "--bind-cores")
    assert run.returncode == 0, run.stderr
    check_collectives(tmp_path, 2)
    assert "[rank 0] collective_job: rank 0/2 past first AllReduce" in run.stdout
    assert "[rank 1]" not in run.stdout
    first, second = results(tmp_path, 2)
    assert first["cwd"] == str(tmp_path / "logs" / "rank_0")
    assert (tmp_path / "logs" / "rank_1" / "env.log").read_text().count("MS_ROLE=MS_WORKER") == 1
    assert not set(first["affinity"]) & set(second["affinity"])
    assert leftovers(str(tmp_path)) == []


def test_four_workers_collectives(python_exe, clean_env, tmp_path):
    run = launch(python_exe, clean_env, tmp_path, 4)
    assert run.returncode == 0, run.stderr
    check_collectives(tmp_path, 4)
    assert sorted(p.name for p in (tmp_path / "logs").glob("worker_*.log")) == [
        f"worker_{r}.log" for r in range(4)]
    assert leftovers(str(tmp_path)) == []


@pytest.mark.parametrize("mode, exit_code, detail", [
    ("exit3", 3, "exit code 3"),
    ("raise", 1, "RuntimeError: collective_job: deliberate failure on rank 1"),
    ("sigkill", 137, "signal SIGKILL (exit code 137)"),
])
def test_worker_failure_ends_the_job(python_exe, clean_env, tmp_path, mode, exit_code, detail):
    run = launch(python_exe, clean_env, tmp_path, 2, job_args=("--fail-mode", mode, "--fail-rank", "1"))
    assert run.returncode == exit_code, run.stderr
    assert "launcher: rank 1 failed with" in run.stderr
    assert detail in run.stderr
    assert "collective_job: rank 1/2 past first AllReduce" in run.stderr, "last log lines are shown"
    assert not (tmp_path / "result_0.json").exists(), "rank 0 was stopped while blocked in a collective"
    assert leftovers(str(tmp_path)) == []


def wait_for_log(path, text, proc, limit=TIMEOUT):
    deadline = time.monotonic() + limit
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM])  # SIGINT: same path, tested in test_supervisor.py
def test_signal_to_launcher_stops_the_whole_cluster(python_exe, clean_env, tmp_path, signum):
    proc = subprocess.Popen(launcher_cmd(python_exe, tmp_path, 2, job_args=("--fail-mode", "hang")),
                            env=clean_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for rank in range(2):
            wait_for_log(tmp_path / "logs" / f"worker_{rank}.log", "past first AllReduce", proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum
    assert f"received {signal.Signals(signum).name}" in err
    assert leftovers(str(tmp_path)) == []


def test_max_restarts_recovers(python_exe, clean_env, tmp_path):
    marker = tmp_path / "failed_once.json"
    run = launch(python_exe, clean_env, tmp_path, 2, "--max-restarts", "1",
                 job_args=("--fail-mode", "fail_once", "--fail-rank", "1", "--marker", str(marker)))
    assert run.returncode == 0, run.stderr
    assert "rank 1 failed with exit code 3" in run.stderr and "restart 1 of 1" in run.stderr
    assert "fails once" in (tmp_path / "logs" / "attempt_0" / "worker_1.log").read_text()
    assert "rank 1 done" in (tmp_path / "logs" / "attempt_1" / "worker_1.log").read_text()
    check_collectives(tmp_path, 2)
    assert leftovers(str(tmp_path)) == []


def test_two_launchers_as_two_nodes_on_loopback(python_exe, clean_env, tmp_path):
    port = str(free_port())
    nodes = [subprocess.Popen(launcher_cmd(python_exe, tmp_path, 1, "--nnodes", "2", "--node-rank", str(node),
                                           "--master-addr", "127.0.0.1", "--master-port", port),
                              env=clean_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for node in (1, 0)]
    try:
        outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    check_collectives(tmp_path, 2)
    assert (tmp_path / "logs" / "scheduler.log").exists()
    assert leftovers(str(tmp_path)) == []


# ---------------------------------------------------------------- the scripts users type

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script, args, message", [
    ("run_distribute.sh", [], "usage: bash scripts/run_distribute.sh N CONFIG"),
    ("run_distribute.sh", ["2"], "usage: bash scripts/run_distribute.sh N CONFIG"),
    ("run_distribute.sh", ["two", "cfg.yaml"], "N 'two': expected a positive number"),
    ("run_distribute.sh", ["2", "missing.yaml"], "CONFIG 'missing.yaml': file not found"),
    ("run_distribute.sh", ["2", "cfg.yaml", "train.steps"], "override 'train.steps': expected key=value"),
    ("run_distribute.sh", ["2", "cfg.yaml", "train.no_such_key=1"], "train.no_such_key"),
    ("run_standalone.sh", [], "usage: bash scripts/run_standalone.sh CONFIG"),
    ("run_standalone.sh", ["missing.yaml"], "CONFIG 'missing.yaml': file not found"),
    ("run_standalone.sh", ["cfg.yaml", "--device-id"], "--device-id '': expected a device number"),
    ("run_standalone.sh", ["cfg.yaml", "--device-id", "x"], "--device-id 'x': expected a device number"),
    ("run_standalone.sh", ["cfg.yaml", "oops"], "argument 'oops': expected key=value"),
])
def test_script_argument_errors(clean_env, python_exe, tmp_path, script, args, message):
    (tmp_path / "cfg.yaml").write_text("output_dir: runs/x\n")
    run = subprocess.run(["bash", str(REPO / "scripts" / script), *args], env={**clean_env, "PYTHON": python_exe},
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert message in run.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "cfg.yaml"], "nothing written"


# model, seed and weight decay as training_runs.TINY's: the same train-step graph, so the suite compiles it once
TINY = f"""\
model: {{name: {TINY_MODEL}}}
data:
  train: {{type: shapes, split: train, num_samples: 32}}
  eval: null
train: {{batch_size: 4, max_steps: 3, mode: graph, seed: 7, weight_decay: 0.1}}
output_dir: runs/tiny
"""


@pytest.fixture()
def tiny_config(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    return "tiny.yaml"


def test_run_distribute_trains_on_two_workers(clean_env, python_exe, tmp_path, tiny_config):
    run = subprocess.run(["bash", str(REPO / "scripts" / "run_distribute.sh"), "2", tiny_config,
                          "train.max_steps=1"], env={**clean_env, "PYTHON": python_exe}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = tmp_path / "runs" / "tiny" / "logs"
    assert "on 2 rank(s)" in (logs / "worker_0.log").read_text() and (logs / "worker_1.log").exists()
    assert "[rank 0] " in run.stdout
    assert (logs / "rank_0" / "env.log").read_text().count("MS_WORKER_NUM=2") == 1
    assert leftovers(str(tmp_path)) == []


def dry_run_cores(clean_env, python_exe, tmp_path, tiny_config, launcher_opts):
    """{process name: its cores} of `run_distribute.sh 2` under LAUNCHER_OPTS="--dry-run ..."."""
    run = subprocess.run(["bash", str(REPO / "scripts" / "run_distribute.sh"), "2", tiny_config],
                         env={**clean_env, "PYTHON": python_exe, "LAUNCHER_OPTS": f"--dry-run {launcher_opts}"},
                         cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    blocks = parse_dry_run(run.stdout)
    assert blocks and all("cores" in block for block in blocks.values()), run.stdout
    return {name: block["cores"] for name, block in blocks.items()}


def test_run_distribute_pins_each_worker_unless_told_not_to(clean_env, python_exe, tmp_path, tiny_config):
    pinned = dry_run_cores(clean_env, python_exe, tmp_path, tiny_config, "")
    workers = [pinned[f"rank {rank}"] for rank in range(2)]
    assert "all" not in workers, pinned
    usable = sorted(psutil.Process().cpu_affinity())
    expected = [",".join(map(str, block)) for block in split_cores(usable, 2)]
    assert workers == expected, (workers, expected)
    unpinned = dry_run_cores(clean_env, python_exe, tmp_path, tiny_config, "--no-bind-cores")
    assert set(unpinned.values()) == {"all"}, unpinned


def test_run_standalone_is_one_pynative_process(clean_env, python_exe, tmp_path, tiny_config):
    env = {**clean_env, "PYTHON": python_exe, "MS_ROLE": "MS_WORKER", "RANK_SIZE": "8"}  # must be ignored
    run = subprocess.run(["bash", str(REPO / "scripts" / "run_standalone.sh"), tiny_config, "train.max_steps=1",
                          "--device-id", "0"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=TIMEOUT * 2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 1 rank(s)" in run.stdout + run.stderr and "pynative mode" in run.stdout + run.stderr
    assert not (tmp_path / "runs" / "tiny" / "logs").exists(), "no launcher involved"
