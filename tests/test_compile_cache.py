"""clip.train.compile_cache: the cache key (pure), one writer per key directory, and, on real runs, that the
same graph launched again from a new output_dir reuses the cached train step with identical results, that a
changed learning rate (an input of the graph) reuses it correctly, that a changed constant compiles its own,
that a 2-rank job whose ranks fall back from shared memory to MindSpore's transport never reads the shared-memory
graph, and that a program run with `python -c` or from stdin trains (without the cache)."""
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clip import profiles
from clip.config import RunConfig
from clip.model.architectures import get_config
from clip.native import kernels, shm_collectives
from clip.train.compile_cache import (
    COMPLETE,
    ENABLE,
    LOOP_ONLY,
    PATH,
    ROOT_ENV,
    cache_key,
    cache_root,
    claim,
    graph_environment,
    graph_fields,
    main_is_a_file,
    stop_caching,
)

from clusters import clean_environ

from training_runs import TINY, TINY_MODEL, finish_training, max_param_diff, model_params, start_training

REPO = Path(__file__).resolve().parent.parent
VERSIONS = {"mindspore": "2.10.0", "python": "3.11", "sources": "abc", "device_target": "CPU"}
ARCH = get_config("clip_tiny").to_dict()


def config(**train) -> dict:
    cfg = dataclasses.asdict(RunConfig())
    cfg["train"].update(train)
    return cfg


def test_loop_only_fields_do_not_change_the_key():
    base = cache_key(config(), ARCH, 1, 0, VERSIONS)
    assert cache_key(config(log_every=10, save_every=5, stop_after=3, resume="none", overwrite=True, tensorboard=False,
                            max_skipped_steps=3, resume_reset_scaler=True), ARCH, 1, 0, VERSIONS) == base
    # the learning-rate schedule reaches the step as a tensor input, not as a constant of the graph
    assert cache_key(config(lr=1e-3, max_steps=99, warmup_steps=7, min_lr=1e-6, lr_schedule="linear", epochs=3),
                     ARCH, 1, 0, VERSIONS) == base
    other = config()
    other["output_dir"] = "elsewhere"
    other["data"]["train"]["num_samples"] = 7
    assert cache_key(other, ARCH, 1, 0, VERSIONS) == base
    assert "data" not in graph_fields(config()) and "output_dir" not in graph_fields(config())
    assert all(not f.startswith("train.") or f.split(".")[1] not in graph_fields(config())["train"]
               for f in LOOP_ONLY)


@pytest.mark.parametrize("change", [
    lambda c: c["train"].update(beta2=0.9), lambda c: c["train"].update(batch_size=8),
    lambda c: c["train"].update(weight_decay=0.0), lambda c: c["train"].update(grad_clip_norm=1.0),
    lambda c: c["train"].update(accum_steps=2), lambda c: c["train"].update(precision="fp16"),
    lambda c: c["model"].update(dtype="float16"),
    lambda c: c["model"].update(recompute=True), lambda c: c["loss"].update(mode="full"),
    lambda c: c["train"].update(seed=1)])
def test_anything_the_graph_depends_on_changes_the_key(change):
    changed = config()
    change(changed)
    assert cache_key(changed, ARCH, 1, 0, VERSIONS) != cache_key(config(), ARCH, 1, 0, VERSIONS)


def test_the_architecture_is_keyed_not_where_it_came_from():
    """A checkpoint or JSON file re-written with another architecture must not meet its old graph; the same
    architecture reached by another name, path or tokenizer file shares it."""
    base = cache_key(config(), ARCH, 1, 0, VERSIONS)
    elsewhere = config()
    elsewhere["model"].update(name=None, checkpoint="/runs/a/converted.ckpt", tokenizer="/t/tokenizer.json")
    assert cache_key(elsewhere, ARCH, 1, 0, VERSIONS) == base
    for other in (get_config("clip_vit_b_32").to_dict(), {**ARCH, "vision_layers": 3}, {**ARCH, "dtype": "float16"},
                  {**ARCH, "init_logit_bias": -10.0}, {**ARCH, "activation": "gelu"}):
        assert cache_key(config(), other, 1, 0, VERSIONS) != base


def test_world_size_rank_device_and_versions_change_the_key():
    base = cache_key(config(), ARCH, 2, 0, VERSIONS)
    assert cache_key(config(), ARCH, 2, 1, VERSIONS) != base
    assert cache_key(config(), ARCH, 4, 0, VERSIONS) != base
    assert cache_key(config(), ARCH, 2, 0, {**VERSIONS, "sources": "abd"}) != base
    assert cache_key(config(), ARCH, 2, 0, {**VERSIONS, "device_target": "Ascend"}) != base


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


# ---------------------------------------------------------------- the environment, the transport, the main module

def test_the_key_keeps_exactly_the_variables_that_change_the_graph():
    env = {"CLIP_PROFILE": "stock", "CLIP_SHM_COLLECTIVES": "off", "MS_DEV_JIT_SYNTAX_LEVEL": "0",
           "MS_DEV_RUNTIME_CONF": "memory_statistics:True", "MS_ENABLE_LCCL": "1", "MS_ALLOC_CONF": "enable_vmm:True",
           "MS_FORMAT_MODE": "1",
           # start-up, timeouts, logging and paths: not the graph
           "MS_SCHED_PORT": "8118", "MS_NODE_ID": "1", "MS_CPU_COMM_OP_TIMEOUT": "7200", "GLOG_v": "3",
           "CLIP_SHM_COLLECTIVES_TIMEOUT": "5", "CLIP_KERNEL_DIR": "/k", "HOME": "/root", ROOT_ENV: "/c"}
    assert list(graph_environment(env)) == ["MS_ALLOC_CONF", "MS_DEV_JIT_SYNTAX_LEVEL", "MS_DEV_RUNTIME_CONF",
                                            "MS_ENABLE_LCCL", "MS_FORMAT_MODE"]
    base = cache_key(config(), ARCH, 2, 0, {**VERSIONS, "environment": {}})
    for name in graph_environment(env):
        assert cache_key(config(), ARCH, 2, 0, {**VERSIONS, "environment": {name: env[name]}}) != base, name


def test_the_profile_switches_are_keyed_by_what_they_choose_not_by_their_spelling():
    """CLIP_PROFILE=auto and no CLIP_PROFILE choose the same pieces on CPU, so they share a graph; what the
    switches choose (profile, transport) is in `versions` and is keyed (next test)."""
    for env in ({}, {"CLIP_PROFILE": "auto"}, {"CLIP_PROFILE": "native"}, {"CLIP_SHM_COLLECTIVES": "on"}):
        assert graph_environment(env) == {}
        assert profiles.choose(env, "CPU") == profiles.choose({}, "CPU")
    assert profiles.choose({"CLIP_SHM_COLLECTIVES": "off"}, "CPU").transport == "mindspore"


def test_the_profile_and_the_transport_change_the_key():
    native = {**VERSIONS, "profile": "native", "transport": "shm", "kernels": "/k/kernels.so"}
    base = cache_key(config(), ARCH, 2, 0, native)
    assert cache_key(config(), ARCH, 2, 0, {**native, "transport": "mindspore"}) != base
    assert cache_key(config(), ARCH, 2, 0, {**native, "profile": "stock", "kernels": "off"}) != base


def test_mindspores_cache_is_used_only_when_the_main_module_is_a_file(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    assert main_is_a_file([str(script)])
    for argv in (["-c"], ["-"], [""], [], [str(tmp_path / "gone.py")], [str(tmp_path)]):
        assert not main_is_a_file(argv), argv


def private_kernels(root: Path) -> Path:
    """The session's two CPU libraries, copied under `root` as a build there would place them."""
    for source in (kernels.SOURCE, shm_collectives.SOURCE):
        built = Path(kernels.build(source_file=source))
        shutil.copytree(built.parent, root / built.parent.name, dirs_exist_ok=True)
    return root


def key_files(root: Path) -> dict:
    """key -> what `<key>.json` says the directory holds."""
    return {p.stem: json.loads(p.read_text()) for p in root.glob("*.json")}


@pytest.fixture(scope="module")
def transports(tmp_path_factory):
    """A 2-rank job on shared memory, then the same job once the shared-memory library no longer loads, so the
    ranks agree on MindSpore's transport at run time with the same config and environment; one cache root.
    -> (root, keys after the first job, keys after the second, the second job's worker logs)."""
    base = tmp_path_factory.mktemp("transports")
    root, kernel_dir = base / "cache", private_kernels(base / "kernels")
    env = {**clean_environ(), "PYTHONUNBUFFERED": "1", "GLOG_v": "3", ROOT_ENV: str(root),
           "CLIP_KERNEL_DIR": str(kernel_dir)}
    overrides = [f"model.name={TINY_MODEL}", "data.train.type=shapes", "data.train.num_samples=16", "data.eval=null",
                 "train.max_steps=1", "train.batch_size=4", "train.num_workers=0", "train.resume=none",
                 "train.mode=graph"]
    seen, logs = [], ""
    for run in ("shm", "mindspore"):
        if run == "mindspore":
            for library in kernel_dir.glob("*/shm_collectives.so"):
                library.write_bytes(library.read_bytes()[:300])
        out = base / run
        command = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", "2", "--log-dir",
                   str(out / "logs"), "--no-chdir", "--tee", "0", "--", sys.executable, "-m", "clip.train"]
        for override in overrides + [f"output_dir={out}"]:
            command += ["--set", override]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        logs = "".join(p.read_text(errors="replace") for p in sorted((out / "logs").glob("worker_*.log")))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + logs[-3000:]
        seen.append(key_files(root))
    return root, seen[0], seen[1], logs


@pytest.mark.processes
def test_a_switched_transport_compiles_and_caches_its_own_graph(transports):
    root, first, both, second_logs = transports
    assert sorted((k["rank"], k["versions"]["transport"]) for k in first.values()) == [(0, "shm"), (1, "shm")]
    second = {key: inputs for key, inputs in both.items() if key not in first}
    assert sorted((k["rank"], k["versions"]["transport"]) for k in second.values()) == [(0, "mindspore"),
                                                                                        (1, "mindspore")]
    assert "cannot load the cached" in second_logs  # the ranks fell back at run time
    for key, inputs in second.items():  # the same job in every other respect
        twin = next(k for k in first.values() if k["rank"] == inputs["rank"])
        assert inputs["config"] == twin["config"]
        assert {**inputs["versions"], "transport": "shm"} == twin["versions"]
    # every key has its own complete directory with its rank's graph: the second job wrote, never read, one
    for key in both:
        assert (root / key / COMPLETE).is_file()
        assert any((root / key / f"rank_{both[key]['rank']}").rglob("*.mindir")), key


# The README's snippet, shortened: one step, no evaluation (its graphs are never cached).
README_SNIPPET = textwrap.dedent("""
    from clip import Trainer

    trainer = Trainer(task="contrastive_language_image_pretrain", model="clip_tiny",
                      config={"output_dir": OUTPUT_DIR, "train.max_steps": 1, "data.eval": None})
    trainer.train()
    print("trained")
""")


@pytest.mark.processes
def test_the_readme_trainer_snippet_runs_with_python_c_and_from_stdin(tmp_path):
    """MindSpore's cache reads sys.argv[0] as the main module's source: "-c" and "-" are no files."""
    env = {**clean_environ(), "PYTHONUNBUFFERED": "1", "GLOG_v": "3", ROOT_ENV: str(tmp_path / "cache")}
    started = {}
    for how in ("c", "stdin"):
        code = README_SNIPPET.replace("OUTPUT_DIR", repr(str(tmp_path / how)))
        argv, stdin = ([sys.executable, "-c", code], None) if how == "c" else ([sys.executable, "-"], code)
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        started[how] = (proc, stdin)
    for how, (proc, stdin) in started.items():
        out, err = proc.communicate(stdin, timeout=600)
        assert proc.returncode == 0, f"{how}: {err[-3000:]}"
        assert out.strip().splitlines()[-1] == "trained"
        assert (tmp_path / how / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "cache").exists()  # trained without MindSpore's cache
