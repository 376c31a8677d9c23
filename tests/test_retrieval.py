"""Image<->text retrieval: Recall@K arithmetic, and a generated caption set with a determined model."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from clip.data import DatasetConfig, build_train_source

from cifar_files import draw_images
from determined_model import determine, preprocess, tiny_model

N_IMAGES = 6
CAPTIONS = [[f"picture number {i} of the set", f"the drawing called item {i}"] for i in range(N_IMAGES)]


def test_recall_at_k_counts_the_best_placed_relevant_item():
    from clip.eval.retrieval import recall_at_k

    # 3 images, 4 texts; text j belongs to image owner[j].
    owner = np.array([0, 0, 1, 2])
    sim = np.array([[0.9, 0.1, 0.8, 0.0],    # image 0: own text first
                    [0.5, 0.6, 0.4, 0.7],    # image 1: own text (col 2) last, rank 4
                    [0.2, 0.3, 0.9, 0.1]])   # image 2: own text (col 3) last, rank 4
    r = recall_at_k(sim, owner, ks=(1, 2, 4))
    assert r["image_to_text_R@1"] == pytest.approx(100 / 3)
    assert r["image_to_text_R@2"] == pytest.approx(100 / 3)
    assert r["image_to_text_R@4"] == 100.0
    # texts: col0 -> image 0 first; col1 -> images 1, 2 beat image 0: third; col2 -> images 2, 0 beat
    # image 1: third; col3 -> image 1 beats image 2: second
    assert r["text_to_image_R@1"] == 25.0 and r["text_to_image_R@2"] == 50.0
    assert r["text_to_image_R@4"] == 100.0
    assert r["mean_recall"] == pytest.approx(np.mean([v for k, v in r.items() if "_R@" in k]))


def test_ties_count_against_the_query():
    from clip.eval.retrieval import recall_at_k

    r = recall_at_k(np.ones((2, 2)), np.array([0, 1]), ks=(1, 2))
    assert r["image_to_text_R@1"] == 0.0 and r["image_to_text_R@2"] == 100.0


def test_flatten_captions_keeps_owners():
    from clip.eval.retrieval import flatten_captions

    texts, owner = flatten_captions([["a", "b"], ["c"], ["d", "e", "f"]])
    assert texts == list("abcdef") and owner.tolist() == [0, 0, 1, 2, 2, 2]


def write_csv_set(folder, images, captions) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i}.png")
    with open(folder / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for i, caps in enumerate(captions):
            for cap in caps:
                writer.writerow([f"img{i}.png", cap])
    return str(folder / "captions.csv")


@pytest.fixture(scope="module")
def determined(tmp_path_factory):
    """clip_tiny with the visual projection solved so that image i is similar (1) to its own captions
    and orthogonal (0) to every other caption."""
    import mindspore as ms

    from clip.model.tokenizer import tokenize

    images, _ = draw_images(N_IMAGES, 1, seed=7)
    model = tiny_model(seed=2)
    texts = [c for caps in CAPTIONS for c in caps]
    feats = model.encode_text(ms.Tensor(tokenize(texts, model.config.context_length))).asnumpy().astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    owner = np.repeat(np.arange(N_IMAGES), 2)
    determine(model, preprocess(images, model.config.image_size), feats,
              (owner[None, :] == np.arange(N_IMAGES)[:, None]).astype(np.float64))
    root = tmp_path_factory.mktemp("retrieval")
    return {"model": model, "images": images, "root": root}


def test_generated_set_is_retrieved_perfectly(determined):
    from clip.eval.retrieval import evaluate_captions

    path = write_csv_set(determined["root"] / "right", determined["images"], CAPTIONS)
    model = determined["model"]
    r = evaluate_captions(model, build_train_source(DatasetConfig(type="csv", path=path)), model.config.image_size,
                          batch_size=4)
    assert r["images"] == N_IMAGES and r["captions"] == 2 * N_IMAGES
    assert all(r[f"{d}_R@{k}"] == 100.0 for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))


def test_swapped_captions_cost_exactly_their_recall_at_1(determined):
    from clip.eval.retrieval import evaluate_captions

    swapped = [CAPTIONS[1], CAPTIONS[0]] + CAPTIONS[2:]
    path = write_csv_set(determined["root"] / "swapped", determined["images"], swapped)
    model = determined["model"]
    r = evaluate_captions(model, build_train_source(DatasetConfig(type="csv", path=path)), model.config.image_size,
                          batch_size=4)
    # Images 0 and 1 now own each other's captions: both image queries and those four caption queries miss.
    assert r["image_to_text_R@1"] == pytest.approx(100 * 4 / 6)
    assert r["text_to_image_R@1"] == pytest.approx(100 * 8 / 12)


@pytest.mark.processes
def test_eval_cli_retrieval_task(determined, tmp_path):
    import mindspore as ms

    path = write_csv_set(determined["root"] / "cli", determined["images"], CAPTIONS)
    ckpt = tmp_path / "model.ckpt"
    ms.save_checkpoint(determined["model"], str(ckpt))
    config = tmp_path / "retrieval.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "clip_tiny"},
                                      "data": {"retrieval": {"type": "csv", "path": path, "split": "test"}},
                                      "output_dir": str(tmp_path / "out")}))
    proc = subprocess.run([sys.executable, "-m", "clip.eval", "--config", str(config), "--checkpoint", str(ckpt),
                           "--task", "retrieval"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert result["image_to_text_R@1"] == 100.0 and result["text_to_image_R@10"] == 100.0
    assert result["images"] == 6 and result["captions"] == 12 and result["task"] == "retrieval"
    assert "retrieval 6 images 12 captions: image_to_text_R@1 100.00" in proc.stdout
    assert not (tmp_path / "out" / "eval.json").exists()


def test_flickr8k_test_split_with_five_captions_per_image(tmp_path):
    """The official layout (misspelt image folder, token file, split files); only the test split is read."""
    import mindspore as ms

    from clip.eval.retrieval import evaluate_captions
    from clip.model.tokenizer import tokenize

    images, _ = draw_images(6, 1, seed=9)
    captions = [[f"scene {i} seen in way {k}" for k in range(5)] for i in range(6)]
    model = tiny_model(seed=6)
    texts = [c for caps in captions for c in caps]
    feats = model.encode_text(ms.Tensor(tokenize(texts, model.config.context_length))).asnumpy().astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    owner = np.repeat(np.arange(6), 5)
    determine(model, preprocess(images, model.config.image_size), feats,
              (owner[None, :] == np.arange(6)[:, None]).astype(np.float64))
    (tmp_path / "Flicker8k_Dataset").mkdir()
    (tmp_path / "Flickr8k_text").mkdir()
    names = [f"{1000 + i}_x.png" for i in range(6)]
    for name, image in zip(names, images):
        Image.fromarray(image).save(tmp_path / "Flicker8k_Dataset" / name)
    (tmp_path / "Flickr8k_text" / "Flickr8k.token.txt").write_text(
        "".join(f"{n}#{k}\t{c}\n" for n, caps in zip(names, captions) for k, c in enumerate(caps)))
    (tmp_path / "Flickr8k_text" / "Flickr_8k.testImages.txt").write_text("\n".join(names[:4]) + "\n")
    (tmp_path / "Flickr8k_text" / "Flickr_8k.trainImages.txt").write_text("\n".join(names[4:]) + "\n")
    cfg = DatasetConfig(type="flickr8k", path=str(tmp_path), split="test")
    r = evaluate_captions(model, build_train_source(cfg), model.config.image_size, batch_size=3)
    assert r["images"] == 4 and r["captions"] == 20
    assert r["image_to_text_R@1"] == 100.0 and r["text_to_image_R@1"] == 100.0
