"""ImageNet and CLIP_benchmark evaluation through `python -m clip.eval` (in process): every metric equals the
same metric computed here in numpy from the model's own encoders (random weights), and the CLIP_benchmark JSON
holds it as a fraction under CLIP_benchmark's names."""
import json

import numpy as np
import pytest
import yaml

from benchmark_files import (
    encoded,
    imagenet_wnids,
    npy_bytes,
    random_images,
    reference_classification,
    reference_classifier,
    reference_image_features,
    reference_map,
    reference_retrieval,
    reference_text_features,
    write_class_folders,
    write_clip_benchmark,
)

EXTS = ["png", "jpg", "jpeg", "webp"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Random-weight clip_tiny, its checkpoint, and a config evaluating it."""
    import mindspore as ms

    from clip.model import create_model

    root = tmp_path_factory.mktemp("bench_eval")
    ms.set_seed(3)
    model = create_model("clip_tiny")
    model.set_train(False)
    ckpt = root / "tiny.ckpt"
    ms.save_checkpoint(model, str(ckpt))
    return {"root": root, "model": model, "ckpt": str(ckpt)}


def run_eval(tiny, out, *sets, task="zeroshot", writes="eval.json"):
    from clip.eval.cli import main

    config = tiny["root"] / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "clip_tiny"}, "train": {"eval_batch_size": 8}}))
    code = main(["--config", str(config), "--checkpoint", tiny["ckpt"], "--task", task,
                 "--set", f"output_dir={out}", *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    return json.loads((out / writes).read_text()), out


def benchmark_json(out, task):
    return json.loads((out / f"clip_benchmark_{task}.json").read_text())


def decoded(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_imagenet_with_all_1000_class_folders(tiny, tmp_path):
    wnids = imagenet_wnids()
    images = random_images(7, seed=1)
    filled = {wnids[0]: images[:2], wnids[17]: images[2:3], wnids[500]: images[3:5], wnids[999]: images[5:]}
    write_class_folders(tmp_path / "imagenet" / "val", wnids, filled)
    result, out = run_eval(tiny, tmp_path / "out", "data.eval.type=imagenet",
                           f"data.eval.path={tmp_path / 'imagenet'}", "data.eval.templates=['a photo of a {}.']")
    from clip.data.imagenet import shipped

    classes = list(shipped()[1])
    labels = np.array([0, 0, 17, 500, 500, 999, 999])
    ordered = [im for w in (wnids[0], wnids[17], wnids[500], wnids[999]) for im in filled[w]]
    scores = reference_image_features(tiny["model"], ordered) @ \
        reference_classifier(tiny["model"], classes, ["a photo of a {}."]).T
    expected = reference_classification(scores, labels)
    assert result["classes"] == 1000 and result["n"] == 7
    assert result["top1"] / 100 == pytest.approx(expected["acc1"])
    assert result["mean_per_class_recall"] / 100 == pytest.approx(expected["mean_per_class_recall"])
    record = benchmark_json(out, "zeroshot_classification")
    assert record["dataset"] == "imagenet1k" and record["task"] == "zeroshot_classification"
    assert record["model"] == "clip_tiny" and record["pretrained"] == "tiny" and record["language"] == "en"
    assert record["metrics"] == pytest.approx(expected)


def test_imagenet_variants_share_the_class_list(tmp_path):
    """ImageNetV2's numbered folders sort by number; a 200-class subset keeps its own 200 names in order."""
    from clip.data import DatasetConfig
    from clip.data.imagenet import load, shipped

    wnids, classes, templates = shipped()
    image = random_images(1)
    write_class_folders(tmp_path / "v2", [str(i) for i in range(1000)], {"2": image, "10": image, "999": image})
    v2 = load(DatasetConfig(type="imagenet", path=str(tmp_path / "v2"), split="val"))
    assert v2.classnames == list(classes) and v2.labels == [2, 10, 999] and len(v2.templates) == 80
    subset = sorted(wnids[::5])
    write_class_folders(tmp_path / "r", subset, {subset[0]: image, subset[199]: image})
    r = load(DatasetConfig(type="imagenet", path=str(tmp_path / "r"), split="val"))
    assert r.classnames == [classes[i] for i in range(0, 1000, 5)] and r.labels == [0, 199]
    from launcher.errors import UserError

    with pytest.raises(UserError, match="/r/train' does not exist"):  # a probe never trains on the val folder
        load(DatasetConfig(type="imagenet", path=str(tmp_path / "r"), split="train"))


def test_shipped_imagenet_prompts_are_open_clips():
    import runpy
    from importlib.util import find_spec
    from pathlib import Path

    from clip.data.imagenet import shipped

    path = Path(find_spec("open_clip").submodule_search_locations[0]) / "zero_shot_metadata.py"
    reference = runpy.run_path(str(path))  # the module alone: open_clip's package needs torchvision
    wnids, classes, templates = shipped()
    assert list(classes) == list(reference["IMAGENET_CLASSNAMES"])
    assert list(templates) == [t("{}") for t in reference["OPENAI_IMAGENET_TEMPLATES"]] and len(templates) == 80
    assert len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)


def test_clip_benchmark_classification_every_image_type(tiny, tmp_path):
    classnames = ["red thing", "green thing", "blue thing"]
    images = random_images(10, seed=2)
    labels = np.array([0, 1, 2, 0, 1, 2, 2, 1, 0, 1])
    samples = [{EXTS[i % 4]: encoded(images[i], EXTS[i % 4]), "cls": f"{labels[i]}\n".encode()}
               for i in range(10)]
    root = write_clip_benchmark(tmp_path / "wds_colours", samples, classnames=classnames,
                                templates=["a photo of a {c}.", "a {c} in a picture."], nshards=3)
    result, out = run_eval(tiny, tmp_path / "out", "data.eval.type=clip_benchmark", f"data.eval.path={root}")
    # Tar order: shard 0 holds samples 0, 3, 6, 9, shard 1 holds 1, 4, 7, shard 2 holds 2, 5, 8.
    order = [0, 3, 6, 9, 1, 4, 7, 2, 5, 8]
    pixels = [decoded(samples[i][EXTS[i % 4]]) for i in order]
    scores = reference_image_features(tiny["model"], pixels) @ reference_classifier(
        tiny["model"], classnames, ["a photo of a {}.", "a {} in a picture."]).T
    expected = reference_classification(scores, labels[order])
    record = benchmark_json(out, "zeroshot_classification")
    assert record["dataset"] == "wds/colours" and result["templates"] == 2 and result["n"] == 10
    assert record["metrics"] == pytest.approx(expected)


def test_clip_benchmark_multilabel_mean_average_precision(tiny, tmp_path):
    classnames = ["cat", "dog", "car", "tree"]
    images = random_images(8, seed=4)
    targets = np.random.default_rng(5).integers(0, 2, (8, 4))
    targets[:, 3] = 0  # a class without positives counts as 0, as in CLIP_benchmark
    samples = [{"jpg": encoded(images[i], "jpg"), "npy": npy_bytes(targets[i])} for i in range(8)]
    root = write_clip_benchmark(tmp_path / "voc", samples, kind="multilabel", classnames=classnames, nshards=1)
    result, out = run_eval(tiny, tmp_path / "out", "data.eval.type=clip_benchmark", f"data.eval.path={root}")
    scores = reference_image_features(tiny["model"], [decoded(s["jpg"]) for s in samples]) @ \
        reference_classifier(tiny["model"], classnames, ["a photo of a {}."]).T
    assert benchmark_json(out, "zeroshot_classification")["metrics"] == pytest.approx(
        {"mean_average_precision": reference_map(scores, targets)})
    assert result["per_class_average_precision"]["tree"] == 0.0


def test_clip_benchmark_retrieval_several_captions_per_image(tiny, tmp_path):
    images = random_images(6, seed=6)
    captions = [[f"picture {i} caption {j}" for j in range(1 + i % 3)] for i in range(6)]
    samples = [{EXTS[i % 4]: encoded(images[i], EXTS[i % 4]), "txt": "\n".join(captions[i]).encode()}
               for i in range(6)]
    root = write_clip_benchmark(tmp_path / "wds_flickr", samples, kind="retrieval", nshards=1)
    # Given as data.eval, as CLIP_benchmark names a set by its path whatever the task: evaluated by retrieval.
    result, out = run_eval(tiny, tmp_path / "out", "data.eval.type=clip_benchmark", f"data.eval.path={root}",
                           "data.eval.recall_k=[1,2,4]", writes="retrieval.json")
    texts = [c for caps in captions for c in caps]
    owner = np.array([i for i, caps in enumerate(captions) for _ in caps])
    expected = reference_retrieval(reference_image_features(tiny["model"], [decoded(s[EXTS[i % 4]]) for i, s in
                                                                            enumerate(samples)]),
                                   reference_text_features(tiny["model"], texts), owner, (1, 2, 4))
    record = benchmark_json(out, "zeroshot_retrieval")
    assert record["task"] == "zeroshot_retrieval" and result["captions"] == len(texts)
    assert record["metrics"] == pytest.approx(expected)


def test_held_out_split_takes_a_share_of_every_class():
    from clip.eval.linear_probe import held_out_split

    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    fit, held = held_out_split(labels)
    assert sorted(fit.tolist() + held.tolist()) == list(range(16))
    assert [int((labels[held] == c).sum()) for c in range(3)] == [2, 1, 0]


def test_linear_probe_on_an_image_folder(tiny, tmp_path):
    from pathlib import Path

    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from clip.eval.linear_probe import C_GRID, held_out_split
    from data_files import write_image_folder

    for split, per_class in (("train", 6), ("val", 3)):
        write_image_folder(tmp_path / "pets", [0, 1, 2], per_class, split=split)
    result, out = run_eval(tiny, tmp_path / "out", "data.eval.type=imagefolder", f"data.eval.path={tmp_path / 'pets'}",
                           task="linear_probe", writes="linear_probe.json")

    def split_of(name):
        folders = sorted(Path(tmp_path / "pets" / name).iterdir())
        files = [(f, c) for c, folder in enumerate(folders) for f in sorted(folder.iterdir())]
        pixels = [np.asarray(Image.open(f).convert("RGB")) for f, _ in files]
        return reference_image_features(tiny["model"], pixels), np.array([c for _, c in files])

    (x_train, y_train), (x_test, y_test) = split_of("train"), split_of("val")
    fit, held = held_out_split(y_train)
    accuracy = [(LogisticRegression(C=c, max_iter=1000).fit(x_train[fit], y_train[fit]).predict(x_train[held])
                 == y_train[held]).mean() for c in C_GRID]
    best = C_GRID[int(np.argmax(accuracy))]  # the first best: the smallest C
    probabilities = LogisticRegression(C=best, max_iter=1000).fit(x_train, y_train).predict_proba(x_test)
    expected = reference_classification(probabilities, y_test)
    assert result["C"] == best and result["n_train"] == 18 and result["n"] == 9
    record = benchmark_json(out, "linear_probe")
    assert record["task"] == "linear_probe" and record["dataset"] == "pets"
    assert record["metrics"] == pytest.approx({"lp_acc1": expected["acc1"], "lp_acc5": expected["acc5"],
                                               "lp_mean_per_class_recall": expected["mean_per_class_recall"]})


def test_benchmark_command_table_cache_and_resume(tiny, tmp_path, capsys):
    """Two sets sharing their classes: one cached classifier, two rows; a second run evaluates nothing."""
    import csv
    import os

    from clip.benchmark import main

    classnames = ["red thing", "green thing"]
    images = random_images(4, seed=7)
    samples = [{"png": encoded(images[i], "png"), "cls": f"{i % 2}".encode()} for i in range(4)]
    sets = [write_clip_benchmark(tmp_path / name, samples[k:], classnames=classnames, nshards=1)
            for k, name in ((0, "wds_a"), (1, "wds_b"))]
    out = tmp_path / "bench"
    argv = ["--checkpoint", tiny["ckpt"], "--dataset", *[f"clip_benchmark:{s}" for s in sets], "--output", str(out),
            "--set", "model.name=clip_tiny"]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["dataset"], r["task"], r["pretrained"]) for r in rows] == \
        [("wds/a", "zeroshot_classification", "tiny"), ("wds/b", "zeroshot_classification", "tiny")]
    for row, name in zip(rows, ("wds_a", "wds_b")):
        record = json.loads((out / "tiny" / f"wds_{name[4:]}" / "clip_benchmark_zeroshot_classification.json")
                            .read_text())
        assert float(row["acc1"]) == record["metrics"]["acc1"]
    assert "| clip_tiny / tiny |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert len(os.listdir(out / "cache")) == 1  # one (checkpoint, class names, templates)
    written = (out / "tiny" / "wds_a" / "eval.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "2 evaluations, 2 already written" in capsys.readouterr().err
    assert (out / "tiny" / "wds_a" / "eval.json").stat().st_mtime_ns == written


def test_cached_classifier_gives_the_same_result(tiny, tmp_path):
    from clip.data import DatasetConfig, build_eval_source
    from clip.eval.zeroshot import ClassifierCache, evaluate_source

    samples = [{"png": encoded(im, "png"), "cls": f"{i % 3}".encode()} for i, im in enumerate(random_images(6))]
    root = write_clip_benchmark(tmp_path / "set", samples, classnames=["a", "b", "c"], nshards=1)
    source = build_eval_source(DatasetConfig(type="clip_benchmark", path=str(root), split="test"))
    cache = ClassifierCache(str(tmp_path / "cache"), ("weights", 1))
    fresh = evaluate_source(tiny["model"], source, 64, 8, cache=cache)
    cached = evaluate_source(tiny["model"], source, 64, 8, cache=cache)
    assert cached["per_class"] == fresh["per_class"] and cached["top1"] == fresh["top1"]
    assert cached["classifier_seconds"] < fresh["classifier_seconds"]


def test_sharded_retrieval_shares_sum_to_the_single_card(tiny, tmp_path):
    """Each rank's share of the image and caption rows (zero elsewhere) sums to the single process's."""
    from clip.data import DatasetConfig, build_train_source
    from clip.eval.retrieval import flatten_captions, image_share, text_share

    images = random_images(5, seed=8)
    samples = [{"jpg": encoded(images[i], "jpg"), "txt": f"image {i}\nphoto {i}".encode()} for i in range(5)]
    root = write_clip_benchmark(tmp_path / "ret", samples, kind="retrieval", nshards=2)
    source = build_train_source(DatasetConfig(type="clip_benchmark", path=str(root), split="test"))
    texts, _ = flatten_captions([source.captions(i) for i in range(len(source))])
    whole, readable = image_share(tiny["model"], source, 64, 2)
    parts = [image_share(tiny["model"], source, 64, 2, (r, 2)) for r in range(2)]
    assert readable.tolist() == [1] * 5 and (parts[0][1] + parts[1][1]).tolist() == [1] * 5
    assert np.allclose(parts[0][0] + parts[1][0], whole, atol=1e-6)
    assert not (parts[0][0][1::2].any() or parts[1][0][0::2].any())  # every row comes from one rank
    text_parts = [text_share(tiny["model"], texts, 4, (r, 2)) for r in range(2)]
    assert np.allclose(text_parts[0] + text_parts[1], text_share(tiny["model"], texts, 4), atol=1e-6)


def test_benchmark_gives_the_tokenizer_to_the_checkpoints_that_need_one(tiny, tmp_path, capsys):
    """An OpenAI-BPE checkpoint and a SigLIP one (T5 vocabulary) in one benchmark with --tokenizer: the SigLIP
    checkpoint gets the file and scores what `clip.eval` gives it alone, the OpenAI one is evaluated without it;
    a --tokenizer that no checkpoint needs is refused in one line."""
    import csv

    import mindspore as ms

    import tokenizer_files
    from clip.benchmark import main
    from clip.eval.cli import main as evaluate
    from clip.model import create_model
    from clip.model.weights import write

    config = tmp_path / "siglip.json"
    config.write_text(json.dumps(tokenizer_files.tiny_open_clip_config(tokenizer_files.T5_NAME, 256)))
    ms.set_seed(4)
    siglip = create_model(str(config))
    siglip_ckpt = write(str(tmp_path / "siglip.ckpt"), siglip, architecture=siglip.config)
    spiece = tokenizer_files.t5_sentencepiece(str(tmp_path / "spiece.model"))
    samples = [{"png": encoded(im, "png"), "cls": f"{i % 2}".encode()} for i, im in enumerate(random_images(4, seed=9))]
    data = write_clip_benchmark(tmp_path / "wds_set", samples, classnames=["red thing", "green thing"], nshards=1)
    out = tmp_path / "bench"
    assert main(["--checkpoint", tiny["ckpt"], siglip_ckpt, "--dataset", f"clip_benchmark:{data}",
                 "--output", str(out), "--tokenizer", spiece]) == 0
    rows = {r["pretrained"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert sorted(rows) == ["siglip", "tiny"]
    alone = tmp_path / "alone"
    assert evaluate(["--checkpoint", siglip_ckpt, "--tokenizer", spiece, "--set", "data.eval.type=clip_benchmark",
                     "--set", f"data.eval.path={data}", "--set", "data.eval.split=test",
                     "--set", f"output_dir={alone}"]) == 0
    assert float(rows["siglip"]["acc1"]) == json.loads((alone / "eval.json").read_text())["top1"] / 100
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["--checkpoint", tiny["ckpt"], "--dataset", f"clip_benchmark:{data}", "--output", str(tmp_path / "b2"),
              "--tokenizer", spiece])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(err) == 1 and "no checkpoint needs it" in err[0]
    assert not (tmp_path / "b2").exists()
