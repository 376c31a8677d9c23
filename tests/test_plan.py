"""The launch plan (pure) and its dry-run view through `python -m launcher run --dry-run` for both backends."""
import json
import subprocess

import pytest

from clusters import parse_dry_run
from launcher import plan, ranktable
from launcher.errors import UserError


def options(**overrides):
    base = dict(command=("python", "train.py"), nproc=2, log_dir="/logs/attempt_0", run_dir="/logs",
                launch_dir="/work", master_port=29500, available_cores=(0, 1, 2, 3, 4, 5, 6, 7))
    base.update(overrides)
    return plan.PlanOptions(**base)


def test_choose_backend():
    assert plan.choose_backend("auto", has_ascend_cards=True) == "ascend"
    assert plan.choose_backend("auto", has_ascend_cards=False) == "cluster"
    assert plan.choose_backend("cluster", has_ascend_cards=True) == "cluster"
    assert plan.choose_backend("ascend", has_ascend_cards=False) == "ascend"
    with pytest.raises(UserError, match="--backend 'gpu'"):
        plan.choose_backend("gpu", has_ascend_cards=False)


def test_split_cores_even_blocks_and_sharing():
    assert plan.split_cores(range(8), 2) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert plan.split_cores([0, 1, 2, 3, 4, 5, 6], 3) == [(0, 1), (2, 3), (4, 5)]
    assert plan.split_cores([4, 5], 4) == [(4,), (5,), (4,), (5,)]
    assert plan.split_cores([], 2) == [(), ()]


def test_cluster_plan_single_node_exact_env():
    specs = plan.cluster_plan(options(bind_cores=True), python="/venv/python")
    scheduler, w0, w1 = specs
    assert scheduler.role == "scheduler" and scheduler.argv[:2] == ("/venv/python", "-c")
    fast = {"MS_RETRY_INTERVAL_LOWER": "1", "MS_RETRY_INTERVAL_UPPER": "1"}  # 1 s heartbeats: quicker formation
    assert scheduler.env == {"MS_ROLE": "MS_SCHED", "MS_SCHED_HOST": "127.0.0.1",
                             "MS_SCHED_PORT": "29500", "MS_WORKER_NUM": "2", **fast}
    assert scheduler.log_path == "/logs/attempt_0/scheduler.log"
    for rank, spec in enumerate((w0, w1)):
        assert spec.env == {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "29500",
                            "MS_WORKER_NUM": "2", "MS_NODE_ID": str(rank), **fast}
        assert spec.argv == ("python", "train.py")
        assert spec.cwd == f"/logs/rank_{rank}"
        assert spec.log_path == f"/logs/attempt_0/worker_{rank}.log"
        assert spec.env_log == f"/logs/rank_{rank}/env.log"
    assert (w0.cores, w1.cores) == ((0, 1, 2, 3), (4, 5, 6, 7))


def test_cluster_plan_keeps_a_heartbeat_interval_the_user_set():
    specs = plan.cluster_plan(options(), python="python", environ={"MS_RETRY_INTERVAL_UPPER": "7"})
    for spec in specs:
        assert "MS_RETRY_INTERVAL_LOWER" not in spec.env and "MS_RETRY_INTERVAL_UPPER" not in spec.env


def test_cluster_plan_second_node_has_global_ranks_and_no_scheduler():
    specs = plan.cluster_plan(options(nnodes=2, node_rank=1, master_addr="10.1.1.1", chdir=False),
                              python="python")
    assert [s.role for s in specs] == ["worker", "worker"]
    assert [s.rank for s in specs] == [2, 3]
    assert [s.env["MS_NODE_ID"] for s in specs] == ["2", "3"]
    assert {s.env["MS_WORKER_NUM"] for s in specs} == {"4"}
    assert {s.env["MS_SCHED_HOST"] for s in specs} == {"10.1.1.1"}
    assert {s.cwd for s in specs} == {"/work"}
    assert all(s.cores is None for s in specs)


def test_ascend_plan_exact_env():
    specs = plan.ascend_plan(options(nproc=2), "/cfg/table.json", rank_size=4, local_devices=[(2, 4), (3, 5)])
    assert [s.env for s in specs] == [
        {"RANK_TABLE_FILE": "/cfg/table.json", "RANK_SIZE": "4", "RANK_ID": "2", "DEVICE_ID": "4"},
        {"RANK_TABLE_FILE": "/cfg/table.json", "RANK_SIZE": "4", "RANK_ID": "3", "DEVICE_ID": "5"}]
    assert [s.log_path for s in specs] == ["/logs/attempt_0/worker_2.log", "/logs/attempt_0/worker_3.log"]


def test_ascend_plan_renumbers_device_ids_under_visible_devices():
    """With ASCEND_RT_VISIBLE_DEVICES=4,5,6,7 chip 5 is device 1 inside the worker; the table keeps chip 5."""
    specs = plan.ascend_plan(options(nproc=2), "/cfg/table.json", rank_size=2, local_devices=[(0, 5), (1, 7)],
                             visible_chips=[4, 5, 6, 7])
    assert [s.env["DEVICE_ID"] for s in specs] == ["1", "3"]
    with pytest.raises(UserError, match="chip 7 is in the rank table but not in ASCEND_RT_VISIBLE_DEVICES"):
        plan.ascend_plan(options(nproc=2), "/t.json", 2, [(0, 5), (1, 7)], visible_chips=[4, 5])


@pytest.mark.parametrize("build, message", [
    (lambda: plan.cluster_plan(options(command=()), "python"), "no command to run"),
    (lambda: plan.cluster_plan(options(nproc=0), "python"), "--nproc 0"),
    (lambda: plan.cluster_plan(options(nnodes=2, node_rank=2), "python"), "--node-rank 2"),
    (lambda: plan.cluster_plan(options(master_port=70000), "python"), "--master-port 70000"),
    (lambda: plan.ascend_plan(options(), "table.json", 2, [(0, 0), (1, 1)]), "absolute path"),
    (lambda: plan.ascend_plan(options(nproc=3), "/t.json", 2, [(0, 0), (1, 1)]), "lists 2 devices"),
])
def test_plan_rejects_bad_options(build, message):
    with pytest.raises(UserError, match=message):
        build()


def test_attempt_dirs():
    assert plan.attempt_log_dir("/l", 0, max_restarts=0) == "/l"
    assert plan.attempt_log_dir("/l", 1, max_restarts=2) == "/l/attempt_1"


# ---------------------------------------------------------------- dry run through the command line

def launcher(args, env, cwd):
    return subprocess.run([env["PYTHON_EXE"], "-m", "launcher", "run", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def env(clean_env, python_exe):
    return {**clean_env, "PYTHON_EXE": python_exe}


@pytest.mark.processes
def test_dry_run_cluster(env, tmp_path):
    result = launcher(["-n", "2", "--backend", "cluster", "--master-port", "29611", "--bind-cores",
                       "--log-dir", str(tmp_path / "logs"), "--dry-run", "--", "sh", "job.sh", "--lr", "0.1"],
                      env, tmp_path)
    assert result.returncode == 0, result.stderr
    blocks = parse_dry_run(result.stdout)
    assert list(blocks) == ["scheduler", "rank 0", "rank 1"]
    assert blocks["rank 1"]["env"] == {"MS_NODE_ID": "1", "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1",
                                       "MS_SCHED_PORT": "29611", "MS_WORKER_NUM": "2",
                                       "MS_RETRY_INTERVAL_LOWER": "1", "MS_RETRY_INTERVAL_UPPER": "1"}
    assert blocks["scheduler"]["env"]["MS_ROLE"] == "MS_SCHED"
    assert blocks["rank 0"]["command"] == "sh job.sh --lr 0.1"
    assert blocks["rank 0"]["cwd"] == str(tmp_path / "logs" / "rank_0")
    assert blocks["rank 0"]["log"] == str(tmp_path / "logs" / "worker_0.log")
    assert blocks["rank 0"]["cores"] != ""
    assert not (tmp_path / "logs").exists(), "a dry run starts and writes nothing"


HCCN = "".join(f"address_{chip}=192.98.{chip % 4}.{10 + chip}\nnetmask_{chip}=255.255.255.0\n"
               for chip in range(8))


@pytest.mark.processes
def test_dry_run_ascend_generates_table_from_hccn_conf(env, tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text(HCCN)
    logs = tmp_path / "logs"
    result = launcher(["-n", "4", "--backend", "ascend", "--hccn-conf", str(conf), "--server-ip", "10.0.0.5",
                       "--log-dir", str(logs), "--dry-run", "--", "sh", "train.sh"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    table = str(logs / "hccl_configs" / "hccl_4p_0123_10.0.0.5.json")
    blocks = parse_dry_run(result.stdout)
    assert {name: block["env"] for name, block in blocks.items()} == {
        f"rank {r}": {"DEVICE_ID": str(r), "RANK_ID": str(r), "RANK_SIZE": "4", "RANK_TABLE_FILE": table}
        for r in range(4)}
    assert f"rank table would be written to {table}" in result.stdout
    assert not logs.exists()


@pytest.mark.processes
def test_dry_run_ascend_with_merged_table_picks_this_servers_devices(env, tmp_path):
    ips = {chip: f"192.98.0.{10 + chip}" for chip in (4, 5)}
    other = {chip: f"192.99.0.{10 + chip}" for chip in (4, 5)}
    merged = ranktable.merge([ranktable.server_table("10.0.0.2", ips), ranktable.server_table("10.0.0.1", other)])
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(merged))
    result = launcher(["--backend", "ascend", "--rank-table", str(path), "--server-ip", "10.0.0.2",
                       "--dry-run", "--", "sh", "train.sh"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    blocks = parse_dry_run(result.stdout)
    assert {name: block["env"] for name, block in blocks.items()} == {
        "rank 2": {"DEVICE_ID": "4", "RANK_ID": "2", "RANK_SIZE": "4", "RANK_TABLE_FILE": str(path)},
        "rank 3": {"DEVICE_ID": "5", "RANK_ID": "3", "RANK_SIZE": "4", "RANK_TABLE_FILE": str(path)}}


@pytest.mark.processes
@pytest.mark.parametrize("args, message", [
    (["-n", "0", "--", "sh"], "argument -n/--nproc/--nproc-per-node/--nproc_per_node: 0 must be at least 1"),
    (["-n", "2"], "no command to run"),
    (["--tee", "5", "-n", "2", "--", "sh"], "--tee '5': rank 5 is not in 0..1"),
    (["--nnodes", "2", "--", "sh"], "--nnodes 2: pass --master-port"),
    (["--nnodes", "2", "--master-port", "29400", "--", "sh"], "--nnodes 2: pass --master-addr"),
    (["--max-restarts", "-1", "--", "sh"], "argument --max-restarts: -1 must not be negative"),
    (["--", "no_such_program_xyz", "train.py"], "command 'no_such_program_xyz': not found"),
    (["--backend", "ascend", "--rank-table", "missing.json", "--", "sh"], "missing.json"),
])
def test_run_bad_input_is_one_line_exit_2(env, tmp_path, args, message):
    result = launcher(["--backend", "cluster", *args] if "--backend" not in args else args, env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "launcher_logs").exists()
