"""`python -m clip.eval` end to end: real subprocesses, a CIFAR-format file, a checkpoint whose answers are
designed (see test_zeroshot.py), one-line user errors, and a real 2-worker CPU cluster."""
import json
import os
import subprocess
import sys

import pytest
import yaml

import clusters
from cifar_files import RAW_NAMES, draw_images, write_cifar
from clusters import clean_environ
from determined_model import PER_CLASS, WRONG, determined_cifar_model, expected_metrics

TIMEOUT = 240


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A CIFAR-format dataset, a determined clip_tiny checkpoint and a config pointing at both."""
    import mindspore as ms

    root = tmp_path_factory.mktemp("evalcli")
    images, labels = draw_images(len(RAW_NAMES), PER_CLASS)
    write_cifar(str(root / "data"), images, labels, RAW_NAMES)
    ckpt = root / "determined.ckpt"
    ms.save_checkpoint(determined_cifar_model(), str(ckpt))
    config = root / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "clip_tiny", "checkpoint": str(ckpt)},
        "data": {"eval": {"type": "cifar100", "path": str(root / "data"), "split": "test"}},
        "train": {"eval_batch_size": 6},
        "output_dir": str(root / "run"),
    }))
    return {"root": root, "config": config, "ckpt": ckpt,
            "expected": expected_metrics(labels, len(RAW_NAMES), WRONG)}


def run_eval(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "clip.eval", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def clean_env():
    env = clean_environ()
    env.update(PYTHONUNBUFFERED="1", GLOG_v="3")
    return env


def assert_designed(result, expected):
    assert result["n"] == expected["n"]
    assert result["top1"] == pytest.approx(expected["top1"])
    assert result["top5"] == pytest.approx(expected["top5"])
    assert list(result["per_class"].values()) == pytest.approx(expected["per_class"])


@pytest.mark.processes
def test_eval_script_writes_designed_accuracy_and_worst_classes(setup, repo_root):
    env = {**clean_env(), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(repo_root / "scripts" / "run_eval.sh"), str(setup["config"])],
                          cwd=setup["root"], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((setup["root"] / "run" / "eval.json").read_text())
    assert_designed(result, setup["expected"])
    assert result["checkpoint"] == str(setup["ckpt"]) and result["task"] == "zeroshot"
    assert result["world_size"] == 1 and result["sharded"] is False
    assert "zero-shot top1 84.38% top5 93.75% on 32 images, 8 classes x 18 templates" in proc.stdout
    assert "worst classes" in proc.stderr and "apple" in proc.stderr and "lawn mower x1" in proc.stderr
    assert not [p for p in os.listdir(setup["root"] / "run") if p.endswith(".tmp")]


@pytest.mark.processes
@pytest.mark.parametrize("args, message", [
    (["--set", "data.eval.path=/nonexistent/cifar"], "error: data.eval.path: dataset directory '/nonexistent/cifar' does not exist"),
    (["--checkpoint", "/nonexistent/w.ckpt"],
     "error: python -m clip.eval: argument --checkpoint: '/nonexistent/w.ckpt' does not exist"),
    (["--set", "data.eval.splitt=test"], "error: --set data.eval.splitt=test: unknown key 'data.eval.splitt'"),
    (["--set", "data.eval.split=dev"],
     "error: data.eval.split: 'dev' is not a CIFAR-100 split (expected test or train; val means test)"),
    (["--task", "retrieval"], "error: data.retrieval is not set; --task retrieval needs a dataset there"),
], ids=["data-path", "checkpoint", "unknown-key", "split", "no-retrieval-set"])
def test_user_errors_are_one_line_exit_2_and_write_nothing(setup, tmp_path, args, message):
    out = tmp_path / "out"
    proc = run_eval(["--config", str(setup["config"]), "--set", f"output_dir={out}", *args], tmp_path, clean_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not list(out.iterdir())


def run_cluster(args, world_size, cwd):
    """Scheduler + workers of a real dynamic cluster, each in its own session; exit codes and logs."""
    return clusters.run_cluster([sys.executable, "-m", "clip.eval", *args], world_size, cwd, clean_env(), TIMEOUT)


@pytest.mark.processes
@pytest.mark.parametrize("sharded, task", [(True, "zeroshot"), (False, "zeroshot"), (True, "linear_probe")],
                         ids=["sharded", "rank0", "sharded-linear-probe"])
def test_two_worker_cluster_gives_single_card_numbers(setup, tmp_path, sharded, task):
    out = tmp_path / "run"
    config = yaml.safe_load(setup["config"].read_text())
    config["model"].pop("checkpoint")
    config["output_dir"] = str(out)
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "eval.yaml"), "--checkpoint", str(setup["ckpt"]), "--task", task]
    codes, logs = run_cluster(args + (["--sharded"] if sharded else []), 2, tmp_path)
    assert codes["worker_0"] == 0 and codes["worker_1"] == 0, logs
    if task == "linear_probe":
        # Each rank encoded every other image of both splits; the single card's run, in this process:
        from clip.eval.cli import main

        assert main(args + ["--set", f"output_dir={tmp_path / 'one'}"]) == 0
        two, one = (json.loads((d / "linear_probe.json").read_text()) for d in (out, tmp_path / "one"))
        keys = ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "C", "sweep", "n_train", "n")
        assert {k: two[k] for k in keys} == {k: one[k] for k in keys} and two["n"] == 32
        assert two["world_size"] == 2 and two["sharded"] is True
        assert json.loads((out / "clip_benchmark_linear_probe.json").read_text())["metrics"]["lp_acc1"] == \
            one["lp_acc1"] / 100
        return
    result = json.loads((out / "eval.json").read_text())
    assert_designed(result, setup["expected"])
    assert result["world_size"] == 2 and result["sharded"] is sharded
    assert "zero-shot top1 84.38%" in logs["worker_0"] and "zero-shot top1" not in logs["worker_1"]
    assert ("rank 0 evaluates" in logs["worker_1"]) is not sharded


@pytest.mark.processes
def test_two_worker_cluster_gives_single_card_multilabel_precision(setup, tmp_path):
    """A multilabel CLIP_benchmark set (11 images: 6 on rank 0, 5 on rank 1; a class without positives) evaluated
    --sharded on 2 real workers: each rank scores its own images and the ranking is over the all-reduced rows, so
    mean and per-class average precision equal the single card's exactly."""
    import numpy as np

    from benchmark_files import encoded, npy_bytes, random_images, write_clip_benchmark
    from clip.eval.cli import main

    images = random_images(11, seed=12)
    targets = np.random.default_rng(12).integers(0, 2, (11, 4))
    targets[:, 3] = 0
    samples = [{"jpg": encoded(images[i], "jpg"), "npy": npy_bytes(targets[i])} for i in range(11)]
    voc = write_clip_benchmark(tmp_path / "voc", samples, kind="multilabel",
                               classnames=["apple", "bicycle", "rocket", "tulip"], nshards=1)
    args = ["--config", str(setup["config"]), "--checkpoint", str(setup["ckpt"]),
            "--set", "data.eval.type=clip_benchmark", "--set", f"data.eval.path={voc}"]
    codes, logs = run_cluster(args + ["--sharded", "--set", f"output_dir={tmp_path / 'two'}"], 2, tmp_path)
    assert codes["worker_0"] == 0 and codes["worker_1"] == 0, logs
    assert main(args + ["--set", f"output_dir={tmp_path / 'one'}"]) == 0
    two, one = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("two", "one"))
    assert two["world_size"] == 2 and two["sharded"] is True and two["n"] == one["n"] == 11
    assert two["mean_average_precision"] == one["mean_average_precision"] > 0
    assert two["per_class_average_precision"] == one["per_class_average_precision"]
    assert one["per_class_average_precision"]["tulip"] == 0.0


@pytest.mark.processes
def test_rank_failing_under_the_launcher_is_named_with_its_error(setup, tmp_path):
    """clip.eval as a 2-worker launcher job whose dataset is missing on rank 1's node (simulated by a per-rank
    path): rank 1 writes its error file, the launcher names it as the root cause with the one-line message
    and the file:line."""
    from clip.data import base

    from jobs.processes import leftovers

    raise_line = next(i for i, line in enumerate(open(base.__file__).read().splitlines(), 1)
                      if "dataset directory {path!r} does not exist" in line)
    (tmp_path / "node_0").mkdir()
    (tmp_path / "node_0" / "cifar").symlink_to(setup["root"] / "data")
    worker = (f'exec "$0" -m clip.eval --config {setup["config"]} --sharded --set output_dir={tmp_path / "run"} '
              f'--set data.eval.path={tmp_path}/node_$LAUNCHER_RANK/cifar')
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", "2", "--log-dir",
                           str(logs), "--grace-period", "1", "--", "bash", "-c", worker, sys.executable],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-3000:]  # a user error's code, even if rank 1 was still exiting
    root = [line for line in proc.stderr.splitlines() if "root cause" in line]
    assert len(root) == 1 and "rank 1 on " in root[0], proc.stderr[-3000:]
    assert (f"UserError: data.eval.path: dataset directory '{tmp_path}/node_1/cifar' does not exist, "
            f"raised at {base.__file__}:{raise_line}") in root[0]
    record = json.loads((logs / "failure.json").read_text())
    assert record["root_cause"]["rank"] == 1 and record["root_cause"]["error"]["type"] == "UserError"
    assert "Traceback" not in (logs / "worker_1.log").read_text()  # a user error stays one line
    assert not (tmp_path / "run").exists() and leftovers(str(tmp_path)) == []


@pytest.mark.parametrize("suffix, preset, weights", [
    ("vit_b_32", "clip_vit_b_32", "ViT-B-32"), ("vit_b_16", "clip_vit_b_16", "ViT-B-16"),
    ("vit_l_14", "clip_vit_l_14", "ViT-L-14"), ("vit_l_14_336", "clip_vit_l_14@336", "ViT-L-14-336px")])
def test_shipped_cifar100_configs(repo_root, suffix, preset, weights):
    from clip.config import load_config
    from launcher.errors import UserError

    path = str(repo_root / "configs" / f"eval_cifar100_{suffix}.yaml")
    cfg = load_config(path, ["model.checkpoint=null"])
    assert cfg.model.name == preset and cfg.data.eval.type == "cifar100" and cfg.data.eval.split == "test"
    assert cfg.data.eval.templates is None  # the shipped 18 templates
    with pytest.raises(UserError, match=f"model.checkpoint: file 'checkpoints/{weights}.ckpt' does not exist"):
        load_config(path)


def test_an_evaluation_over_no_image_is_an_error_and_writes_nothing(tmp_path, monkeypatch):
    """Every image unreadable (or a rank's shard empty): 0 images is no accuracy, and no eval.json is written."""
    from clip.api import app
    from clip.config import load_config
    from launcher.errors import UserError

    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}"])
    monkeypatch.setattr(app, "run", lambda *a, **k: {"n": 0, "skipped": 3, "top1": 0.0})
    with pytest.raises(UserError, match=r"no image was evaluated \(3 unreadable\)"):
        app.evaluate_and_write(cfg, "zeroshot", None)
    assert not (tmp_path / "out").exists()
