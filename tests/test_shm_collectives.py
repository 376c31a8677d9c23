"""clip.shm_collectives: the train step's collectives through shared memory for the ranks of one host. The
ranks' agreement (pure), a real 2-rank cluster that checks the sums against MindSpore's AllReduce bit for bit,
the gathers byte for byte, and that ranks which disagree get an error rather than a hang, and a rank that
waits for an exited peer."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clip.native import shm_collectives

from clusters import clean_environ, run_cluster

JOB = Path(__file__).resolve().parent / "jobs" / "shm_collectives_job.py"


# ---------------------------------------------------------------- pure

@pytest.mark.parametrize("target, world, expected", [
    ("CPU", 2, True), ("CPU", 64, True), ("Ascend", 2, False), ("GPU", 8, False), ("CPU", 1, False),
    ("CPU", 65, False),
])
def test_only_cpu_jobs_of_2_to_64_ranks_can_use_it(target, world, expected):
    assert shm_collectives.possible(target, world) is expected


@pytest.mark.parametrize("value, off", [("off", True), (" OFF ", True), ("", False), ("on", False)])
def test_the_switch(value, off):
    assert shm_collectives.switched_off({"CLIP_SHM_COLLECTIVES": value}) is off
    assert shm_collectives.switched_off({}) is False


def test_host_id_tells_machines_and_boots_apart():
    assert shm_collectives.host_id("node1", "boot-a") == shm_collectives.host_id("node1", "boot-a")
    assert shm_collectives.host_id("node1", "boot-a") != shm_collectives.host_id("node2", "boot-a")
    assert shm_collectives.host_id("node1", "boot-a") != shm_collectives.host_id("node1", "boot-b")
    assert 0 <= shm_collectives.host_id("node1", "") < 2 ** 56  # fits the int64 the ranks exchange


def test_the_ranks_agree_only_when_all_offer_it_on_one_host():
    offers = np.array([[1, 7, 100, 5], [1, 7, 101, 6], [1, 7, 102, 7]], np.int64)
    assert shm_collectives.agree(offers) is None
    declined = offers.copy()
    declined[2, 0] = 0
    assert shm_collectives.agree(declined) == "rank 2 cannot use it"
    elsewhere = offers.copy()
    elsewhere[1, 1] = 8
    assert shm_collectives.agree(elsewhere) == "the ranks run on more than one host"


def test_a_segment_is_named_after_rank_0s_process_and_a_random_token():
    path = shm_collectives.segment_path(0xABC, 4242)
    assert path == "/dev/shm/mindclip-collectives-4242-0000000000000abc"


# ---------------------------------------------------------------- a real cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("shm_cluster")
    env = {**clean_environ(), "PYTHONUNBUFFERED": "1", "GLOG_v": "3"}
    codes, logs = run_cluster([sys.executable, str(JOB), str(out_dir)], 2, out_dir, env, 300)
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("worker_*.json"))]
    return {"codes": codes, "logs": logs, "results": results}


def test_both_workers_finish(cluster):
    failed = {name: text[-2000:] for name, text in cluster["logs"].items() if cluster["codes"][name] != 0}
    assert not failed, f"exit codes {cluster['codes']}\n{failed}"
    assert len(cluster["results"]) == 2


def test_the_segment_leaves_no_name_behind(cluster):
    for res in cluster["results"]:
        assert res["shared"] is True
        assert res["segments_left"] == []


def test_sums_across_chunk_boundaries_are_mindspores_bits(cluster):
    for res in cluster["results"]:
        assert len(res["sum_max_diff"]) == 6
        assert all(diff == 0.0 for diff in res["sum_max_diff"].values()), res["sum_max_diff"]


def test_gathers_are_every_ranks_bytes_in_rank_order(cluster):
    for res in cluster["results"]:
        assert len(res["gather_exact"]) == 5
        assert all(res["gather_exact"].values()), res["gather_exact"]


def test_ranks_that_disagree_get_an_error_not_a_hang(cluster):
    for res in cluster["results"]:
        message, seconds = res["mismatch"]
        assert message is not None and "ShmAll" in message, res["mismatch"]
        assert seconds < 60
    logs = cluster["logs"]["worker_0"] + cluster["logs"]["worker_1"]
    assert "ranks disagree on the order, kind or sizes of their collectives" in logs


def test_a_new_segment_works_after_a_failed_one(cluster):
    for res in cluster["results"]:
        assert res["fresh"] == [[3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]]


# ---------------------------------------------------------------- a peer that exits

WAITS_FOR_AN_EXITED_PEER = textwrap.dedent("""
    import ctypes, os, subprocess, sys, time
    import mindspore as ms, numpy as np
    from clip.native import shm_collectives
    library = shm_collectives._library()
    path = shm_collectives.segment_path(12345, os.getpid())
    shm_collectives._create(path, shm_collectives._bytes(library, 2))
    try:
        assert shm_collectives._attach(library, path, 0, 2) == 0
        # rank 1: another process maps the segment, then exits without a single call
        peer = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
                "sys.exit(lib.ShmAttach(sys.argv[2].encode(), 1, 2))")
        subprocess.run([sys.executable, "-c", peer, library, path], check=True)
    finally:
        os.unlink(path)
    started = time.monotonic()
    try:
        shm_collectives._transport(library, 2).all_reduce(ms.Tensor(np.ones(4, np.float32))).asnumpy()
    except RuntimeError:
        print("failed after", time.monotonic() - started)
    else:
        print("no error")
""")


def test_a_rank_waiting_for_an_exited_peer_fails_with_its_rank_and_pid(tmp_path):
    done = subprocess.run([sys.executable, "-c", WAITS_FOR_AN_EXITED_PEER], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GLOG_v": "3"})
    assert "failed after" in done.stdout, done.stdout + done.stderr[-2000:]
    assert float(done.stdout.split("failed after")[1]) < 30
    assert "error: shared-memory collective on rank 0: a peer process exited (rank 1, pid" in done.stderr
