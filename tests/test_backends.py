"""The launcher/worker seam, round trip (pure): what the launcher plans for rank r of W is what that worker
reads back, for every start-up mode in common.backends; and single-card start-up clears all the others."""
import json
import os
import subprocess
import sys

import pytest

from launcher import backends, plan
from launcher.backends import dynamic, ranktable, single

WORLDS = [1, 2, 3, 8]


def options(nproc, nnodes=1, node_rank=0):
    return plan.PlanOptions(command=("python", "train.py"), nproc=nproc, log_dir="/logs", run_dir="/logs",
                            launch_dir="/work", nnodes=nnodes, node_rank=node_rank, master_addr="10.0.0.7",
                            master_port=29500)


def planned_dynamic(world):
    """Every node's plan of a `world`-worker job split over two nodes when it can be."""
    nnodes = 2 if world % 2 == 0 else 1
    return [spec for node in range(nnodes)
            for spec in plan.cluster_plan(options(world // nnodes, nnodes, node), python="/venv/python")]


def planned_ranktable(world):
    chips = [(rank, (rank + 4) % 8) for rank in range(world)]
    return plan.ascend_plan(options(world), "/cfg/hccl.json", world, chips)


@pytest.mark.parametrize("world", WORLDS)
def test_dynamic_cluster_round_trip(world):
    specs = planned_dynamic(world)
    workers = [s for s in specs if s.role == "worker"]
    assert sorted(s.rank for s in workers) == list(range(world))
    for spec in workers:
        read = backends.read_env(spec.env)
        assert (read.startup, read.role, read.rank, read.world_size) == (dynamic.STARTUP, "worker", spec.rank, world)
        assert (read.device_target, read.backend) == ("CPU", "mccl")
        assert set(spec.env) <= set(dynamic.VARIABLES) | set(dynamic.FORMATION_DEFAULTS)
    schedulers = [s for s in specs if s.role == "scheduler"]
    assert len(schedulers) == 1 and schedulers[0].argv[-1] == dynamic.SCHEDULER_CODE
    read = backends.read_env(schedulers[0].env)
    assert (read.role, read.world_size, read.backend) == ("scheduler", world, "mccl")
    assert schedulers[0].awaited == (world % 2 == 0)  # a multi-node job also waits for its scheduler


@pytest.mark.parametrize("world", WORLDS)
def test_rank_table_round_trip(world):
    for spec in planned_ranktable(world):
        read = backends.read_env(spec.env)
        assert (read.startup, read.rank, read.world_size, read.rank_table) == (
            ranktable.STARTUP, spec.rank, world, "/cfg/hccl.json")
        assert (read.device_target, read.backend, read.device_id) == ("Ascend", "hccl", (spec.rank + 4) % 8)
        assert set(spec.env) <= set(ranktable.VARIABLES)


@pytest.mark.parametrize("device_id", [None, 0, 5])
def test_single_card_round_trip(device_id):
    read = backends.read_env(single.worker_env(device_id))
    assert (read.startup, read.rank, read.world_size, read.backend, read.device_id) == (
        single.STARTUP, 0, 1, "none", device_id)


def test_every_backend_is_registered_once_with_its_names():
    assert [b.NAME for b in backends.BACKENDS] == ["ascend", "cluster", "single"]
    assert backends.BACKENDS[-1] is single  # claims every environment, so it is asked last
    assert plan.BACKENDS == ("auto", ranktable.NAME, dynamic.NAME)
    for backend in backends.BACKENDS:
        assert backends.by_name(backend.NAME) is backend
        assert set(backend.VARIABLES) <= set(backends.all_variables())


@pytest.mark.processes
def test_single_card_shell_lines_clear_every_other_start_up_mode(tmp_path):
    """What scripts/run_standalone.sh evals: a worker started inside another launch still runs alone."""
    leftovers = {**planned_dynamic(2)[1].env, **planned_ranktable(2)[1].env}
    script = ('eval "$("$0" -m launcher.backends single --device-id 3)" && "$0" -c '
              '"import os, json; print(json.dumps(dict(os.environ)))"')
    proc = subprocess.run(["bash", "-c", script, sys.executable], env={**_base_env(), **leftovers, "RANK_SIZE": "8"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)
    assert (set(backends.all_variables()) - {"DEVICE_ID"}) & set(env) == set()
    read = backends.read_env(env)
    assert (read.startup, read.device_id, read.world_size) == ("single", 3, 1)


def _base_env():
    return {k: v for k, v in os.environ.items() if k not in backends.all_variables()}
