"""The MindFormers-shaped Python entry points, for real on the tiny preset: show_support_list, CLIPConfig /
CLIPModel.from_pretrained, CLIPModel(config), Trainer (train, evaluate, predict) and pipeline.

One short PYNATIVE training run (module fixture) feeds the evaluation and prediction checks, which compare
the Trainer's answers with the command-line tools' own functions on the same weights.
"""
import json
import os

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

import clip
from clip.api.app import config_from, dataset_from_path
from clip.api.trainer import PRETRAIN, ZERO_SHOT, Trainer
from clip.data.base import DatasetConfig
from clip.data.shapes import CLASSNAMES, render
from clip.model import CLIPModel, create_model
from clip.model.architectures import CLIPConfig
from launcher.backends import dynamic
from launcher.errors import UserError

from cifar_files import RAW_NAMES, draw_images, write_cifar

TINY_RUN = {"model.name": "clip_tiny", "data.train.num_samples": 16, "data.eval.num_samples": 24,
            "train": {"batch_size": 4, "max_steps": 2, "mode": "pynative", "lr": 1e-3, "resume": "none",
                      "eval_batch_size": 24, "num_workers": 1}}
MINDFORMERS_NAMES = ["clip_vit_b_32", "clip_vit_b_16", "clip_vit_l_14", "clip_vit_l_14@336"]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    images, labels = draw_images(len(RAW_NAMES), 2)
    return write_cifar(str(tmp_path_factory.mktemp("cifar")), images, labels, RAW_NAMES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Trainer given a CLIPModel object, trained for two steps."""
    out = tmp_path_factory.mktemp("trainer") / "run"
    ms.set_seed(11)
    start = create_model("clip_tiny")
    trainer = Trainer(task=PRETRAIN, model=start, config={**TINY_RUN, "output_dir": str(out)})
    result = trainer.train()
    return trainer, result, out, start


@pytest.fixture()
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_MODEL_DIR", str(tmp_path / "models"))
    return tmp_path / "models"


# ---------------------------------------------------------------- models and configs

def test_show_support_list_prints_and_returns_the_presets(capsys):
    names = CLIPModel.show_support_list()
    assert names[:4] == MINDFORMERS_NAMES and "clip_tiny" in names
    assert capsys.readouterr().out.strip() == str(names)


def test_config_from_pretrained_is_typed_with_a_readable_repr():
    cfg = CLIPConfig.from_pretrained("clip_vit_b_32")
    assert (cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.patch_size, cfg.image_size) == \
        (768, 12, 12, 32, 224)
    assert (cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.embed_dim, cfg.dtype) == (512, 12, 8, 512, "float32")
    assert repr(cfg).startswith("CLIPConfig(embed_dim=512, image_size=224, patch_size=32, vision_width=768")
    assert CLIPConfig.from_pretrained("clip_vit_l_14@336").image_size == 336
    with pytest.raises(UserError, match="unknown model 'clip_vit_h_14'; expected one of clip_vit_b_32"):
        CLIPConfig.from_pretrained("clip_vit_h_14")


def test_model_from_config_is_randomly_initialised():
    config = CLIPConfig.from_pretrained("clip_tiny")
    ms.set_seed(1)
    a = CLIPModel(config)
    ms.set_seed(2)
    b = CLIPModel(config)
    assert a.config == config
    wa, wb = a.visual.proj.asnumpy(), b.visual.proj.asnumpy()
    assert wa.shape == (128, 64) and wa.std() > 0.01 and not np.allclose(wa, wb)
    features = a.encode_image(ms.Tensor(np.zeros((2, 3, 64, 64), np.float32)))
    assert features.shape == (2, 64)


def test_from_pretrained_loads_a_checkpoint_path_and_a_preset_from_the_model_dir(tmp_path, model_dir):
    ms.set_seed(3)
    source = create_model("clip_tiny")
    path = tmp_path / "weights.ckpt"
    ms.save_checkpoint(source, str(path))
    by_path = CLIPModel.from_pretrained(str(path))
    assert by_path.config == source.config
    model_dir.mkdir()
    ms.save_checkpoint(source, str(model_dir / "clip_tiny.ckpt"))
    by_name = CLIPModel.from_pretrained("clip_tiny")
    piped = clip.pipeline("zero_shot_image_classification", model="clip_tiny", candidate_labels=["a", "b"]).model
    for a, b, c, d in zip(source.get_parameters(), by_path.get_parameters(), by_name.get_parameters(),
                          piped.get_parameters()):
        assert all(np.array_equal(a.asnumpy(), m.asnumpy()) for m in (b, c, d)), a.name


def test_missing_converted_weights_name_the_file_and_the_convert_command(model_dir):
    expected = model_dir / "clip_vit_b_32.ckpt"
    with pytest.raises(UserError) as err:
        CLIPModel.from_pretrained("clip_vit_b_32")
    message = str(err.value)
    assert "\n" not in message and f"expected {expected}" in message
    assert f"python -m clip.convert ViT-B-32.pt {expected}" in message and "CLIP_MODEL_DIR" in message
    with pytest.raises(UserError, match=f"expected {expected}; convert"):
        clip.pipeline("zero_shot_image_classification", model="clip_vit_b_32", candidate_labels=["a", "b"])


def test_default_model_dir_is_under_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("CLIP_MODEL_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match=f"expected {tmp_path}/.cache/mindclip/models/clip_vit_l_14@336.ckpt; "
                                        f"convert OpenAI's ViT-L-14-336px.pt"):
        CLIPModel.from_pretrained("clip_vit_l_14@336")


# ---------------------------------------------------------------- configs and datasets given the MindFormers way

def test_config_dict_takes_nested_sections_and_dotted_keys():
    cfg = config_from({"train": {"lr": 0.01, "batch_size": 4}, "train.max_steps": 7, "data.eval": None,
                       "data.train": DatasetConfig(type="shapes", num_samples=64)})
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.max_steps) == (0.01, 4, 7)
    assert cfg.data.eval is None and cfg.data.train.num_samples == 64 and cfg.train.epochs == 1
    with pytest.raises(UserError, match=r"^config: unknown key 'train.lrr' \(did you mean 'train.lr'\?\)$"):
        config_from({"train.lrr": 1.0})
    with pytest.raises(UserError, match=r"^config: train.batch_size: 0 must be at least 1$"):
        config_from({"train": {"batch_size": 0}})


def test_dataset_locations_map_onto_data_train_and_data_eval(tmp_path, cifar_dir):
    flickr = tmp_path / "Flickr8k"
    flickr.mkdir()
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("filepath\ttitle\n")
    folder = tmp_path / "folder" / "cat"
    folder.mkdir(parents=True)
    shapes = DatasetConfig(type="shapes", split="val", templates=["a {}."])
    assert dataset_from_path(flickr, "train", None) == DatasetConfig(type="flickr8k", path=str(flickr), split="train")
    assert dataset_from_path(str(pairs), "train", None).type == "csv"
    cifar = dataset_from_path(cifar_dir, "eval", shapes)
    assert (cifar.type, cifar.path, cifar.split, cifar.templates) == ("cifar100", cifar_dir, "test", ["a {}."])
    assert dataset_from_path(os.path.join(cifar_dir, "cifar-100-python"), "eval", None).type == "cifar100"
    assert dataset_from_path(str(tmp_path / "folder"), "eval", shapes).type == "imagefolder"
    with pytest.raises(UserError, match="train_dataset '/no/such/dir' does not exist"):
        dataset_from_path("/no/such/dir", "train", None)


# ---------------------------------------------------------------- Trainer: train, evaluate, predict

def test_trainer_trains_like_clip_train(trained):
    trainer, result, out, start = trained
    assert {"checkpoints", "config.yaml", "metrics.jsonl", "metrics.png"} <= {p.name for p in out.iterdir()}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    final = [r for r in rows if "eval_top1" in r][-1]
    assert result["top1"] == final["eval_top1"] and result["n"] == 24 and result["classes"] == 24
    from clip.config import load_config
    cfg = load_config(str(out / "config.yaml"))
    assert cfg.train.mode == "pynative" and cfg.model.checkpoint == str(out / "initial_model.ckpt")
    initial = ms.load_checkpoint(cfg.model.checkpoint)  # training started from the object's weights
    trained_weights = ms.load_checkpoint(str(out / "checkpoints" / "last.ckpt"))
    for param in start.get_parameters():
        assert np.array_equal(initial[param.name].asnumpy(), param.asnumpy()), param.name
    assert not np.array_equal(trained_weights["visual.proj"].asnumpy(), start.visual.proj.asnumpy())


def test_trainer_evaluates_the_trained_weights_as_clip_eval_does(trained):
    trainer, train_result, out, _ = trained
    result = trainer.evaluate()
    assert result["checkpoint"] == str(out / "checkpoints" / "last.ckpt")
    assert (result["top1"], result["top5"], result["n"]) == \
        (train_result["top1"], train_result["top5"], train_result["n"])
    assert json.loads((out / "eval.json").read_text())["top1"] == result["top1"]


def test_trainer_predicts_like_the_pipeline(trained, tmp_path):
    trainer, _, out, _ = trained
    image = render(0, "val", 5)[0]
    top3 = trainer.predict(input_data=image, top_k=3)
    assert len(top3) == 3 and all(p["label"] in CLASSNAMES for p in top3)
    assert top3[0]["score"] >= top3[1]["score"] >= top3[2]["score"]
    pipe = clip.pipeline("zero_shot_image_classification", model=str(out / "checkpoints" / "last.ckpt"),
                         candidate_labels=CLASSNAMES)
    expected = pipe(image, top_k=3)
    assert [p["label"] for p in top3] == [p["label"] for p in expected]
    assert [p["score"] for p in top3] == pytest.approx([p["score"] for p in expected], abs=1e-9)

    labels = ["red circle", "blue square", "green cross"]
    folder = tmp_path / "images"
    folder.mkdir()
    image.save(folder / "a.png")
    render(0, "val", 6)[0].convert("L").save(folder / "b.jpg")
    many = trainer.predict(input_data=[str(folder / "a.png"), image], candidate_labels=labels, top_k=None)
    # a path and the same PIL image give the same answer (the pixels are identical, tests/test_transforms.py;
    # two rows of one batch may differ in the last bits when MindSpore's CPU kernels split work by load)
    assert len(many) == 2 and [p["label"] for p in many[0]] == [p["label"] for p in many[1]]
    assert [p["score"] for p in many[0]] == pytest.approx([p["score"] for p in many[1]], abs=1e-6)
    assert sum(p["score"] for p in many[0]) == pytest.approx(1.0) and {p["label"] for p in many[0]} == set(labels)
    by_dir = trainer.predict(input_data=str(folder), candidate_labels=labels)
    assert len(by_dir) == 2 and by_dir[0] == many[0]
    assert pipe([str(folder / "a.png"), image], candidate_labels=labels) == many
    with pytest.raises(UserError, match=f"image '{folder / 'missing.png'}' does not exist"):
        trainer.predict(input_data=str(folder / "missing.png"))


def test_zero_shot_task_on_a_cifar_directory(trained, cifar_dir, tmp_path):
    _, _, out, _ = trained
    ckpt = str(out / "checkpoints" / "last.ckpt")
    trainer = Trainer(task=ZERO_SHOT, model=ckpt, eval_dataset=cifar_dir, config={"output_dir": str(tmp_path)})
    assert trainer.config.model.name == "clip_tiny" and trainer.config.model.checkpoint == ckpt
    result = trainer.evaluate()
    assert result["dataset"] == {"type": "cifar100", "path": cifar_dir, "split": "test"}
    assert (result["n"], result["classes"], result["templates"]) == (16, 8, 18)
    assert (tmp_path / "eval.json").is_file()
    labels = [p["label"] for p in trainer.predict(input_data=Image.new("RGB", (40, 30), (200, 10, 10)), top_k=8)]
    assert sorted(labels) == sorted(["apple", "aquarium fish", "maple tree", "lawn mower", "bus", "rose",
                                     "sweet pepper", "whale"])
    with pytest.raises(UserError, match="does not train"):
        trainer.train()


def test_explicit_checkpoints_win_over_the_model_directory(trained, cifar_dir, model_dir, tmp_path):
    _, _, out, _ = trained
    ckpt = str(out / "checkpoints" / "last.ckpt")
    data = DatasetConfig(type="cifar100", path=cifar_dir, split="test", templates=["a photo of a {}."])
    by_name = Trainer(task=ZERO_SHOT, model="clip_tiny", eval_dataset=data, config={"output_dir": str(tmp_path / "a")})
    by_path = Trainer(task=ZERO_SHOT, model=ckpt, eval_dataset=data, config={"output_dir": str(tmp_path / "b")})
    with pytest.raises(UserError, match="no converted weights for clip_tiny"):  # model_dir is empty
        by_name.evaluate()
    a, b = by_name.evaluate(eval_checkpoint=ckpt), by_path.evaluate()
    assert a["checkpoint"] == ckpt and (a["top1"], a["per_class"]) == (b["top1"], b["per_class"])
    image = render(0, "val", 7)[0]
    assert by_name.predict(input_data=image, predict_checkpoint=ckpt) == by_path.predict(input_data=image)


def test_trainer_accepts_a_model_object(cifar_dir, tmp_path):
    ms.set_seed(5)
    model = create_model("clip_tiny")
    path = tmp_path / "object.ckpt"
    ms.save_checkpoint(model, str(path))
    one_template = DatasetConfig(type="cifar100", path=cifar_dir, split="test", templates=["a photo of a {}."])
    by_object = Trainer(task=ZERO_SHOT, model=model, eval_dataset=one_template,
                        config={"output_dir": str(tmp_path / "a")})
    by_path = Trainer(task=ZERO_SHOT, model=str(path), eval_dataset=one_template,
                      config={"output_dir": str(tmp_path / "b")})
    a, b = by_object.evaluate(), by_path.evaluate()
    assert a["checkpoint"] == "CLIPModel object (in memory)" and a["templates"] == 1
    assert (a["top1"], a["top5"], a["per_class"]) == (b["top1"], b["top5"], b["per_class"])
    image = Image.new("RGB", (50, 50), (10, 200, 10))
    assert by_object.predict(input_data=image) == by_path.predict(input_data=image)


def test_missing_converted_weights_through_the_trainer(cifar_dir, model_dir, tmp_path):
    trainer = Trainer(task=ZERO_SHOT, model="clip_vit_b_32", eval_dataset=cifar_dir,
                      config={"output_dir": str(tmp_path / "out")})
    with pytest.raises(UserError, match=f"expected {model_dir / 'clip_vit_b_32.ckpt'}; convert OpenAI's "
                                        f"ViT-B-32.pt with: python -m clip.convert ViT-B-32.pt"):
        trainer.evaluate()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("env", [
    dynamic.worker_env("127.0.0.1", 8118, world_size=2, rank=1),
    {"RANK_SIZE": "4"},
])
def test_trainer_refuses_a_multi_card_launch(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="never starts a cluster; for several cards use "
                                        "bash scripts/run_distribute.sh N CONFIG"):
        Trainer(task=PRETRAIN, model="clip_tiny")


def test_trainer_user_errors():
    with pytest.raises(UserError, match="task 'image_to_text_generation' is not supported; expected one of "
                                        "contrastive_language_image_pretrain, zero_shot_image_classification"):
        Trainer(task="image_to_text_generation")
    with pytest.raises(UserError, match="use_parallel=True: the Trainer runs one card"):
        Trainer(config={"use_parallel": True})
    with pytest.raises(UserError, match="model 'clip_vit_b_64' is neither a preset"):
        Trainer(model="clip_vit_b_64")
    with pytest.raises(UserError, match="eval_dataset '/no/such/cifar' is not a directory"):
        Trainer(task=ZERO_SHOT, eval_dataset="/no/such/cifar")
