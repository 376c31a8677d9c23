"""The run config: YAML + --set, typed and validated once; mistakes are one line naming file and key."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clip.config import RunConfig, all_keys, load_config, write_resolved
from launcher.errors import UserError


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_and_overrides_are_typed_and_merged_onto_defaults(tmp_path):
    path = write(tmp_path, """
model: {name: clip_tiny}
data:
  train: {type: shapes, num_samples: 96}
  eval: {num_samples: 48}
train: {lr: 1e-3, batch_size: 4, max_steps: 10}
output_dir: out/run1
""")
    cfg = load_config(path, ["train.warmup_steps=3", "train.lr=2e-4", "data.train.templates=['a {}.', 'b {}.']",
                             "model.checkpoint=null", "train.resume=none"])
    assert cfg.train.lr == pytest.approx(2e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.warmup_steps == 3 and cfg.train.max_steps == 10 and cfg.train.batch_size == 4
    assert cfg.data.train.num_samples == 96 and cfg.data.train.split == "train"
    # a partial section keeps the section's own defaults (eval uses the shapes "val" split)
    assert cfg.data.eval.num_samples == 48 and cfg.data.eval.split == "val"
    assert cfg.data.train.templates == ["a {}.", "b {}."]
    assert cfg.train.resume == "none" and cfg.output_dir == "out/run1"


def test_defaults_need_no_file_and_eval_can_be_disabled():
    cfg = load_config(None, ["data.eval=null"])
    assert cfg == RunConfig(data=cfg.data) and cfg.data.eval is None
    assert cfg.train.mode == "graph" and cfg.loss.mode == "local" and cfg.train.resume == "auto"


@pytest.mark.parametrize("text, overrides, message", [
    ("train: {max_stesp: 3}\n", [], "run.yaml: unknown key 'train.max_stesp' (did you mean 'train.max_steps'?)"),
    ("trian: {lr: 0.1}\n", [], "run.yaml: unknown key 'trian' (did you mean 'train'?)"),
    ("data: {train: {typ: csv}}\n", [], "unknown key 'data.train.typ' (did you mean 'data.train.type'?)"),
    ("train: {lr: fast}\n", [], "run.yaml: train.lr: expected a number, got 'fast'"),
    ("train: {batch_size: 2.5}\n", [], "train.batch_size: expected an integer, got 2.5"),
    ("train: {batch_size: 0}\n", [], "run.yaml: train.batch_size: 0 must be at least 1"),
    ("train: {mode: eager}\n", [], "train.mode: 'eager' is not one of graph, pynative"),
    ("loss: {mode: lokal}\n", [], "loss.mode: 'lokal' is not one of local, full, local_only"),
    ("model: {name: clip_huge}\n", [], "model.name: unknown model 'clip_huge'"),
    ("train: {resume: /no/such.ckpt}\n", [], "train.resume: '/no/such.ckpt' is neither auto, none nor"),
    ("data: {train: {type: coco}}\n", [], "data.train.type: 'coco' is not a training dataset"),
    ("train: 3\n", [], "run.yaml: train: expected a mapping, got 3"),
    ("- a\n- b\n", [], "expected a mapping of config keys at the top level"),
    ("train: {lr: [\n", [], "run.yaml: line 2:"),
    ("", ["train.lrr=1"], "--set train.lrr=1: unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    ("", ["train.lr"], "--set 'train.lr': expected key=value"),
    ("", ["train.max_steps=ten"], "train.max_steps: expected an integer or null, got 'ten' "
                                  "(from --set train.max_steps=ten)"),
])
def test_mistakes_are_one_line_naming_file_and_key(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_config(path, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_key_is_documented(repo_root):
    doc = (repo_root / "docs" / "training.md").read_text()
    missing = [k for k in all_keys() if f"`{k}`" not in doc]
    assert not missing, f"keys missing from docs/training.md: {missing}"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=0.003", "data.train.num_samples=64", "output_dir=x"])
    out = tmp_path / "run" / "config.yaml"
    write_resolved(cfg, str(out))
    assert load_config(str(out)) == cfg
    assert yaml.safe_load(out.read_text())["train"]["lr"] == pytest.approx(0.003)
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temporary file left


@pytest.mark.processes
def test_cli_get_is_fast_and_mindspore_free(repo_root, tmp_path):
    """run_distribute.sh asks this CLI for output_dir before anything starts."""
    path = write(tmp_path, "output_dir: runs/abc\n")
    probe = ("import sys, runpy; sys.argv=['clip.config','--config',%r,'--set','output_dir=runs/x y','--get',"
             "'output_dir']; import clip.config as c; rc=c.main.__wrapped__(sys.argv[1:]); "
             "assert 'mindspore' not in sys.modules, 'imported mindspore'" % path)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=repo_root, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "runs/x y\n"
    bad = subprocess.run([sys.executable, "-m", "clip.config", "--config", path, "--get", "train.lrr"],
                         capture_output=True, text=True, cwd=repo_root, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "error: unknown key 'train.lrr' (did you mean 'train.lr'?)"
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    """Every shipped config loads; converted weights are the user's to provide, so the file check is lifted."""
    cfg = load_config(str(path), ["model.checkpoint=null"])
    assert cfg.output_dir.startswith("runs/")
