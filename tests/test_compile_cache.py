"""clip.compile_cache: the cache key (pure), one writer per key directory, and, on real runs, that the same
graph launched again from a new output_dir reuses the cached train step with identical results, that a
changed learning rate (an input of the graph) reuses it correctly, and that a changed constant compiles its own."""
import dataclasses
import fcntl
import os

import pytest

from clip.config import RunConfig
from clip.train.compile_cache import (
    COMPLETE,
    ENABLE,
    LOOP_ONLY,
    PATH,
    ROOT_ENV,
    cache_key,
    cache_root,
    claim,
    graph_fields,
    stop_caching,
)

from training_runs import TINY, finish_training, max_param_diff, model_params, start_training

VERSIONS = {"mindspore": "2.10.0", "python": "3.11", "sources": "abc", "device_target": "CPU"}


def config(**train) -> dict:
    cfg = dataclasses.asdict(RunConfig())
    cfg["train"].update(train)
    return cfg


def test_loop_only_fields_do_not_change_the_key():
    base = cache_key(config(), 1, 0, VERSIONS)
    assert cache_key(config(log_every=10, save_every=5, stop_after=3, resume="none", overwrite=True), 1, 0,
                     VERSIONS) == base
    # the learning-rate schedule reaches the step as a tensor input, not as a constant of the graph
    assert cache_key(config(lr=1e-3, max_steps=99, warmup_steps=7, min_lr=1e-6, lr_schedule="linear", epochs=3),
                     1, 0, VERSIONS) == base
    other = config()
    other["output_dir"] = "elsewhere"
    other["data"]["train"]["num_samples"] = 7
    assert cache_key(other, 1, 0, VERSIONS) == base
    assert "data" not in graph_fields(config()) and "output_dir" not in graph_fields(config())
    assert all(not f.startswith("train.") or f.split(".")[1] not in graph_fields(config())["train"]
               for f in LOOP_ONLY)


@pytest.mark.parametrize("change", [
    lambda c: c["train"].update(beta2=0.9), lambda c: c["train"].update(batch_size=8),
    lambda c: c["train"].update(weight_decay=0.0), lambda c: c["train"].update(grad_clip_norm=1.0),
    lambda c: c["train"].update(accum_steps=2), lambda c: c["train"].update(precision="fp16"),
    lambda c: c["model"].update(name="clip_vit_b_32"), lambda c: c["model"].update(dtype="float16"),
    lambda c: c["model"].update(recompute=True), lambda c: c["loss"].update(mode="full"),
    lambda c: c["train"].update(seed=1)])
def test_anything_the_graph_depends_on_changes_the_key(change):
    changed = config()
    change(changed)
    assert cache_key(changed, 1, 0, VERSIONS) != cache_key(config(), 1, 0, VERSIONS)


def test_world_size_rank_device_and_versions_change_the_key():
    base = cache_key(config(), 2, 0, VERSIONS)
    assert cache_key(config(), 2, 1, VERSIONS) != base
    assert cache_key(config(), 4, 0, VERSIONS) != base
    assert cache_key(config(), 2, 0, {**VERSIONS, "sources": "abd"}) != base
    assert cache_key(config(), 2, 0, {**VERSIONS, "device_target": "Ascend"}) != base


def test_cache_root_follows_the_environment():
    assert cache_root({}) == os.path.join(os.path.expanduser("~"), ".cache", "mindclip", "compile")
    assert cache_root({ROOT_ENV: "/data/cache"}) == "/data/cache"
    assert cache_root({ROOT_ENV: "off"}) is None and cache_root({ROOT_ENV: "OFF"}) is None
    # a user who configures MindSpore's cache directly owns it
    assert cache_root({PATH: "/mine"}) is None and cache_root({ENABLE: "1", ROOT_ENV: "/data/cache"}) is None


def test_one_writer_per_key_and_readers_only_of_complete_directories(tmp_path):
    writer = claim(str(tmp_path), "k")
    assert writer is not None and writer.lock is not None and writer.path == str(tmp_path / "k")
    assert claim(str(tmp_path), "k") is None  # someone is writing: compile without the cache
    (tmp_path / "k" / "rank_0").mkdir(parents=True)
    (tmp_path / "k" / "rank_0" / "graph.mindir").write_bytes(b"graph")
    stop_caching(writer, env={})
    assert (tmp_path / "k" / COMPLETE).is_file() and writer.lock is None
    reader = claim(str(tmp_path), "k")
    assert reader is not None and reader.lock is None and (tmp_path / "k" / "rank_0" / "graph.mindir").is_file()


def test_a_crashed_writers_directory_is_wiped_and_an_empty_one_never_marked_complete(tmp_path):
    (tmp_path / "k" / "rank_0").mkdir(parents=True)
    (tmp_path / "k" / "rank_0" / "half.mindir").write_bytes(b"hal")  # no COMPLETE, nobody holds the lock
    writer = claim(str(tmp_path), "k")
    assert writer is not None and writer.lock is not None and not (tmp_path / "k").exists()
    env = {ENABLE: "1"}
    stop_caching(writer, env)  # MindSpore wrote nothing: nothing to read later
    assert env[ENABLE] == "0" and not (tmp_path / "k" / COMPLETE).exists()
    with open(tmp_path / "k.lock", "a") as lock:  # and the lock was released
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_an_unwritable_root_means_no_cache_and_one_warning_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert claim(str(tmp_path / "file" / "below"), "k") is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {ROOT_ENV}={tmp_path / 'file' / 'below'}: cannot write")


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """Five 2-step runs in five output_dirs sharing one cache root; the last with the cache off."""
    base = tmp_path_factory.mktemp("cache")
    root = base / "root"
    overrides = [o for o in TINY if not o.startswith("train.max_steps")] + [
        "train.max_steps=2", "train.batch_size=8", "train.mode=graph"]
    runs = {"cold": [], "again": [], "beta2": ["train.beta2=0.9"], "lr": ["train.lr=3e-3"],
            "lr_uncached": ["train.lr=3e-3"]}
    saved = os.environ.get(ROOT_ENV)
    params = {}
    try:
        # "again" and "lr" must find the graph "cold" wrote, so they start after it; the others go side by side
        for wave in (("cold", "beta2", "lr_uncached"), ("again", "lr")):
            started = {}
            for name in wave:
                os.environ[ROOT_ENV] = "off" if name == "lr_uncached" else str(root)
                started[name] = start_training(base / name, overrides + runs[name])
            for name, proc in started.items():
                finish_training(base / name, proc)
                params[name] = model_params(base / name / "checkpoints" / "last.ckpt")
    finally:
        os.environ[ROOT_ENV] = saved
    return base, root, params


@pytest.mark.processes
def test_the_same_job_in_a_new_output_dir_reuses_the_graph_and_matches(launches):
    _, _, params = launches
    assert max_param_diff(params["cold"], params["again"])[0] == 0.0


@pytest.mark.processes
def test_a_changed_learning_rate_reuses_the_graph_and_trains_with_the_new_rate(launches):
    _, _, params = launches
    assert max_param_diff(params["lr"], params["lr_uncached"])[0] == 0.0
    assert max_param_diff(params["lr"], params["cold"])[0] > 1e-4


@pytest.mark.processes
def test_changed_constant_compiles_its_own_graph_and_only_the_train_step_is_cached(launches):
    base, root, params = launches
    keys = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(keys) == 2  # cold/again/lr share one graph, beta2 has its own
    for key in keys:
        assert (key / COMPLETE).is_file()
        assert [p.name.endswith("compile_cache_0.mindir") for p in (key / "rank_0" / "graph_cache").iterdir()
                if p.suffix == ".mindir"] == [True]
    assert not any((base / name / "compile_cache").exists() for name in params)
    # Runs are bit-reproducible (see above): a stale graph would reproduce the first run's parameters exactly.
    assert max_param_diff(params["cold"], params["beta2"])[0] > 0.0
