"""clip.native.shm_collectives: the train step's collectives through shared memory for the ranks of one host.
The ranks' agreement (pure), a real 2-rank cluster that checks the sums against MindSpore's AllReduce bit for
bit, the gathers byte for byte, and that ranks which disagree get an error rather than a hang; pairs of plain
processes (tests/jobs/shm_pair_job.py) for a rank that waits for an exited or a stopped peer, and for kill -9
of either rank anywhere in the segment's set-up, which must leave no name in /dev/shm."""
import glob
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clip.native import shm_collectives
from launcher.errors import UserError

from clusters import clean_environ, run_cluster

JOB = Path(__file__).resolve().parent / "jobs" / "shm_collectives_job.py"
PAIR_JOB = Path(__file__).resolve().parent / "jobs" / "shm_pair_job.py"
NAMES_IN_SHM = "/dev/shm/mindclip-*"


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


def test_a_segment_is_opened_through_rank_0s_descriptor_not_a_name():
    assert shm_collectives.segment_path(4242, 7) == "/proc/4242/fd/7"
    assert "different PID namespaces" in shm_collectives.attach_error(18, "/proc/1/fd/3")  # EXDEV: wrong token
    assert shm_collectives.attach_error(2, "/proc/1/fd/3") == "cannot map /proc/1/fd/3: No such file or directory"


@pytest.mark.parametrize("value, seconds", [(None, 600.0), ("", 600.0), ("2", 2.0), (" 0.5 ", 0.5)])
def test_the_timeout_for_a_live_peer(value, seconds):
    env = {} if value is None else {shm_collectives.TIMEOUT_ENV: value}
    assert shm_collectives.timeout_seconds(env) == seconds


@pytest.mark.parametrize("value", ["0", "-3", "ten", "inf", "nan"])
def test_a_bad_timeout_is_a_one_line_error(value):
    with pytest.raises(UserError) as err:
        shm_collectives.timeout_seconds({shm_collectives.TIMEOUT_ENV: value})
    message = str(err.value)
    assert message.startswith(f"CLIP_SHM_COLLECTIVES_TIMEOUT={value!r}: expected a number of seconds > 0")
    assert "\n" not in message


# ---------------------------------------------------------------- a real cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("shm_cluster")
    env = {**clean_environ(), "PYTHONUNBUFFERED": "1", "GLOG_v": "3"}
    codes, logs = run_cluster([sys.executable, str(JOB), str(out_dir)], 2, out_dir, env, 300)
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("worker_*.json"))]
    return {"codes": codes, "logs": logs, "results": results}


@pytest.mark.processes
def test_both_workers_finish(cluster):
    failed = {name: text[-2000:] for name, text in cluster["logs"].items() if cluster["codes"][name] != 0}
    assert not failed, f"exit codes {cluster['codes']}\n{failed}"
    assert len(cluster["results"]) == 2


@pytest.mark.processes
def test_the_segment_leaves_no_name_behind(cluster):
    for res in cluster["results"]:
        assert res["shared"] is True
        assert res["segments_left"] == []


@pytest.mark.processes
def test_sums_across_chunk_boundaries_are_mindspores_bits(cluster):
    for res in cluster["results"]:
        assert len(res["sum_max_diff"]) == 6
        assert all(diff == 0.0 for diff in res["sum_max_diff"].values()), res["sum_max_diff"]


@pytest.mark.processes
def test_gathers_are_every_ranks_bytes_in_rank_order(cluster):
    for res in cluster["results"]:
        assert len(res["gather_exact"]) == 5
        assert all(res["gather_exact"].values()), res["gather_exact"]


@pytest.mark.processes
def test_ranks_that_disagree_get_an_error_not_a_hang(cluster):
    for res in cluster["results"]:
        message, seconds = res["mismatch"]
        assert message is not None and "ShmAll" in message, res["mismatch"]
        assert seconds < 60
    logs = cluster["logs"]["worker_0"] + cluster["logs"]["worker_1"]
    assert "ranks disagree on the order, kind or sizes of their collectives" in logs


@pytest.mark.processes
def test_a_new_segment_works_after_a_failed_one(cluster):
    for res in cluster["results"]:
        assert res["fresh"] == [[3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]]


# ---------------------------------------------------------------- pairs of plain processes

def start_pair(mode: str, env: dict) -> list:
    """Ranks 0 and 1 of shm_pair_job.py, joined by a socket pair that stands in for MindSpore's all-gather."""
    ends = socket.socketpair()
    try:
        return [subprocess.Popen([sys.executable, str(PAIR_JOB), str(rank), str(end.fileno()), mode],
                                 pass_fds=[end.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env) for rank, end in enumerate(ends)]
    finally:
        for end in ends:
            end.close()


@pytest.fixture(scope="module")
def waits():
    """Rank 0 sums while rank 1, which has mapped the segment, has exited ("exit") or is stopped ("stall");
    a 2 s timeout for live peers. Both pairs side by side: mode -> (rank 0's stdout, its stderr, rank 1's pid)."""
    env = {**os.environ, "GLOG_v": "3", shm_collectives.TIMEOUT_ENV: "2"}
    pairs = {mode: start_pair(mode, env) for mode in ("exit", "stall")}
    results = {}
    try:
        for mode, (first, second) in pairs.items():
            out, err = first.communicate(timeout=180)
            results[mode] = (out, err, second.pid)
    finally:
        for pair in pairs.values():
            for proc in pair:
                if proc.poll() is None:
                    proc.kill()  # the stopped rank 1
                proc.communicate()
    return results


@pytest.mark.processes
def test_a_rank_waiting_for_an_exited_peer_fails_at_once_with_its_rank_and_pid(waits):
    out, err, pid = waits["exit"]
    assert "failed after" in out, out + err[-2000:]
    assert float(out.split("failed after")[1]) < 2  # seen exiting, not timed out
    assert f"error: shared-memory collective on rank 0: a peer process exited (rank 1, pid {pid})" in err


@pytest.mark.processes
def test_a_rank_waiting_for_a_stopped_peer_fails_after_the_timeout_with_its_rank(waits):
    out, err, pid = waits["stall"]
    assert "failed after" in out, out + err[-2000:]
    assert 2 <= float(out.split("failed after")[1]) < 30
    assert (f"error: shared-memory collective on rank 0: a peer made no progress for 2 s "
            f"(CLIP_SHM_COLLECTIVES_TIMEOUT) (rank 1, pid {pid}, stopped)") in err


@pytest.mark.processes
def test_no_segment_name_survives_kill_9_of_either_rank_at_any_moment():
    """Pairs that map segments over and over for 1 s; one rank of each is killed at a random moment, mostly
    inside that loop (its partner then fails), sometimes while it starts."""
    rng = random.Random(27)
    partner_failed = 0
    for _ in range(10):
        pair = start_pair("connect", dict(os.environ))
        victim = rng.randrange(2)
        try:
            starting = rng.random() < 0.2
            if starting:
                time.sleep(rng.uniform(0, 0.3))
            else:
                assert pair[victim].stdout.readline() == "ready\n"
                time.sleep(rng.uniform(0, 0.8))
            pair[victim].kill()
            codes = [proc.wait(timeout=60) for proc in pair]
        finally:
            for proc in pair:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()
        assert codes[victim] == -9
        partner_failed += not starting and codes[1 - victim] != 0
        assert glob.glob(NAMES_IN_SHM) == []
    assert partner_failed >= 6  # the kills landed while the pair was setting segments up
