"""clip.compile_cache: the cache key (pure) and, on real runs, that a second launch reuses the train step's
graph with identical results while a changed config compiles its own."""
import dataclasses

import numpy as np
import pytest

from clip.compile_cache import LOOP_ONLY, cache_key, graph_fields
from clip.config import RunConfig
from test_equivalence import TINY, max_param_diff, model_params, run_training

VERSIONS = {"mindspore": "2.10.0", "python": "3.11", "sources": "abc"}


def config(**train) -> dict:
    cfg = dataclasses.asdict(RunConfig())
    cfg["train"].update(train)
    return cfg


def test_loop_only_fields_do_not_change_the_key():
    base = cache_key(config(), 1, 0, VERSIONS)
    assert cache_key(config(log_every=10, save_every=5, stop_after=3, resume="none", overwrite=True), 1, 0,
                     VERSIONS) == base
    other = config()
    other["output_dir"] = "elsewhere"
    other["data"]["train"]["num_samples"] = 7
    assert cache_key(other, 1, 0, VERSIONS) == base
    assert "data" not in graph_fields(config()) and "output_dir" not in graph_fields(config())
    assert all(not f.startswith("train.") or f.split(".")[1] not in graph_fields(config())["train"]
               for f in LOOP_ONLY)


@pytest.mark.parametrize("change", [
    lambda c: c["train"].update(lr=1e-3), lambda c: c["train"].update(batch_size=8),
    lambda c: c["train"].update(max_steps=99), lambda c: c["model"].update(name="clip_vit_b_32"),
    lambda c: c["model"].update(dtype="float16"), lambda c: c["loss"].update(mode="full"),
    lambda c: c["train"].update(seed=1)])
def test_anything_the_graph_depends_on_changes_the_key(change):
    changed = config()
    change(changed)
    assert cache_key(changed, 1, 0, VERSIONS) != cache_key(config(), 1, 0, VERSIONS)


def test_world_size_rank_and_versions_change_the_key():
    base = cache_key(config(), 2, 0, VERSIONS)
    assert cache_key(config(), 2, 1, VERSIONS) != base
    assert cache_key(config(), 4, 0, VERSIONS) != base
    assert cache_key(config(), 2, 0, {**VERSIONS, "sources": "abd"}) != base


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "run"
    overrides = [o for o in TINY if not o.startswith("train.max_steps")] + [
        "train.max_steps=2", "train.batch_size=8", "train.mode=graph", "train.overwrite=true"]
    params = []
    for extra in ([], [], ["train.beta2=0.9"]):  # cold, the same job again, a changed constant of the graph
        run_training(out, 1, overrides + extra)
        params.append(model_params(out / "checkpoints" / "last.ckpt"))
    return out, params


def test_second_launch_reuses_the_graph_and_matches(launches):
    out, (cold, again, _) = launches
    assert max_param_diff(cold, again)[0] == 0.0


def test_changed_config_compiles_its_own_graph_and_only_the_train_step_is_cached(launches):
    out, (cold, _, changed) = launches
    keys = sorted((out / "compile_cache").iterdir())
    assert len(keys) == 2
    for key in keys:
        assert [p.name.endswith("compile_cache_0.mindir") for p in (key / "rank_0" / "graph_cache").iterdir()
                if p.suffix == ".mindir"] == [True]
    # Runs are bit-reproducible (see above): a stale graph would reproduce the first run's parameters exactly.
    assert max(float(np.max(np.abs(cold[k] - changed[k]))) for k in cold) > 0.0
