"""`python -m clip --run_mode train|eval|predict`, run as real processes on the tiny preset.

Train on a small Flickr8k directory (given with --train_dataset_dir) with a CIFAR-100 directory as data.eval,
then evaluate and predict with the trained checkpoint; each answer is checked against another tool on the same
weights (the training run's own final evaluation, the in-process pipeline). User mistakes: one line, exit 2.
"""
import json
import subprocess
import sys

import pytest

from clip.data.shapes import render

from cifar_files import RAW_NAMES, draw_images, write_cifar
from training_runs import REPO, clean_env

pytestmark = pytest.mark.processes

LABELS = ["red circle", "blue square", "green cross"]
CONFIG = """\
model:
  name: clip_tiny
train:
  batch_size: 4
  max_steps: 2
  mode: pynative
  lr: 0.001
  resume: none
  eval_batch_size: 32
"""


def run_clip(args, env=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clip", *args], cwd=REPO, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def make_flickr(root):
    """Flickr8k in MindFormers' layout: 8 shapes images with their five captions, all in the train split."""
    images = root / "Flickr8k_Dataset" / "Flickr8k_Dataset"
    text = root / "Flickr8k_text"
    images.mkdir(parents=True)
    text.mkdir()
    lines, names = [], []
    for i in range(8):
        image, _, captions = render(3, "train", i)
        name = f"{100 + i}_shape.jpg"
        image.save(images / name, quality=95)
        names.append(name)
        lines += [f"{name}#{k}\t{caption}" for k, caption in enumerate(captions)]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_modes")
    (root / "tiny.yaml").write_text(CONFIG)
    images, labels = draw_images(len(RAW_NAMES), 2)
    write_cifar(str(root / "cifar"), images, labels, RAW_NAMES)
    make_flickr(root / "flickr")
    (root / "predict").mkdir()
    render(0, "val", 1)[0].save(root / "predict" / "one.png")
    render(0, "val", 6)[0].save(root / "predict" / "two.jpg")
    return root


@pytest.fixture(scope="module")
def trained(workspace):
    out = workspace / "run"
    proc = run_clip(["--config", str(workspace / "tiny.yaml"), "--run_mode", "train",
                     "--train_dataset_dir", str(workspace / "flickr"), "--eval_dataset_dir", str(workspace / "cifar"),
                     "--set", f"output_dir={out}"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_train_mode_runs_clip_train_on_the_given_directories(trained, workspace):
    out, stdout = trained
    from clip.config import load_config

    cfg = load_config(str(out / "config.yaml"))
    assert (cfg.data.train.type, cfg.data.train.path, cfg.data.train.split) == \
        ("flickr8k", str(workspace / "flickr"), "train")
    assert (cfg.data.eval.type, cfg.data.eval.path, cfg.data.eval.split) == \
        ("cifar100", str(workspace / "cifar"), "test")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert "final zero-shot top-1" in stdout and "on 16 images, 8 classes" in stdout


def test_eval_mode_gives_the_training_runs_final_numbers(trained, workspace):
    out, _ = trained
    proc = run_clip(["--config", str(workspace / "tiny.yaml"), "--run_mode", "eval",
                     "--eval_dataset_dir", str(workspace / "cifar"),
                     "--checkpoint", str(out / "checkpoints" / "last.ckpt"),
                     "--set", f"output_dir={workspace / 'eval'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((workspace / "eval" / "eval.json").read_text())
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert (result["top1"], result["top5"], result["n"]) == (final["eval_top1"], final["eval_top5"], final["eval_n"])
    assert result["dataset"]["type"] == "cifar100" and result["templates"] == 18
    assert proc.stdout.strip() == f"zero-shot top1 {result['top1']:.2f}% top5 {result['top5']:.2f}% on 16 images, " \
                                  f"8 classes x 18 templates"


def test_predict_mode_prints_the_pipelines_scores(trained, workspace):
    out, _ = trained
    ckpt = str(out / "checkpoints" / "last.ckpt")
    proc = run_clip(["--config", str(workspace / "tiny.yaml"), "--run_mode", "predict",
                     "--predict_data", str(workspace / "predict"), "--checkpoint", ckpt,
                     "--candidate_labels", ",".join(LABELS), "--top_k", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import clip

    paths = [str(workspace / "predict" / "one.png"), str(workspace / "predict" / "two.jpg")]
    expected = clip.pipeline("zero_shot_image_classification", model=ckpt, candidate_labels=LABELS, top_k=2)(paths)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 6 and [lines[0], lines[3]] == paths
    for block, preds in zip((lines[1:3], lines[4:6]), expected):
        assert block == [f"  {p['score']:8.4f}  {p['label']}" for p in preds]


def test_missing_converted_weights_error_names_the_file_and_the_command(workspace, tmp_path):
    env = clean_env()
    env["CLIP_MODEL_DIR"] = str(tmp_path / "models")
    out = tmp_path / "out"
    proc = run_clip(["--run_mode", "eval", "--eval_dataset_dir", str(workspace / "cifar"),
                     "--set", "model.name=clip_vit_b_16", "--set", f"output_dir={out}"], env=env)
    expected = tmp_path / "models" / "clip_vit_b_16.ckpt"
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: no converted weights for clip_vit_b_16: expected {expected}; convert OpenAI's ViT-B-16.pt with: "
        f"python -m clip.convert ViT-B-16.pt {expected} (or set CLIP_MODEL_DIR to the directory holding "
        f"clip_vit_b_16.ckpt)"]
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--run_mode", "fit"], "error: python -m clip: argument --run_mode: invalid choice: 'fit'"),
    (["--run_mode", "predict"], "error: --run_mode predict needs --predict_data PATH"),
    # README.md: a file that exists (the runs start in the repository), so the check after the path's runs
    (["--run_mode", "eval", "--predict_data", "README.md"], "error: --predict_data applies to --run_mode predict only"),
    (["--run_mode", "train", "--config", "missing.yaml"],
     "error: python -m clip: argument --config: 'missing.yaml' does not exist"),
    (["--run_mode", "train", "--train_dataset_dir", "/no/flickr"],
     "error: python -m clip: argument --train_dataset_dir: '/no/flickr' does not exist"),
    (["--run_mode", "predict", "--predict_data", "/no/cat.png", "--candidate_labels", "cat,dog"],
     "error: python -m clip: argument --predict_data: '/no/cat.png' does not exist"),
    (["--run_mode", "predict", "--predict_data", "README.md", "--candidate_labels", "cat,,dog"],
     "error: --candidate_labels: ['cat', '', 'dog'] must be a non-empty list"),
])
def test_user_mistakes_are_one_line_with_exit_code_2(args, message, tmp_path):
    proc = run_clip(args + ["--set", f"output_dir={tmp_path / 'out'}"], timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not (tmp_path / "out").exists()
