"""Zero-shot classification: classifier construction, CIFAR-100 files, accuracy with a determined model.

The "determined model" is the real clip_tiny whose visual projection is solved (least squares) so that
each test image's feature has chosen scores against the classifier; the expected accuracy then follows
from the design, not from running the code under test (tests/determined_model.py, shared with the other
evaluation tests).
"""
import hashlib
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from clip.data.base import DatasetConfig
from launcher.errors import UserError

from cifar_files import CLEAN_NAMES, RAW_NAMES, draw_images, write_cifar
from determined_model import (
    PER_CLASS,
    WRONG,
    determined_cifar_model,
    direct_text_embeddings,
    expected_metrics,
    preprocess,
    shipped_templates,
    tiny_model,
)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def drawn():
    return draw_images(len(RAW_NAMES), PER_CLASS)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory, drawn):
    images, labels = drawn
    return write_cifar(str(tmp_path_factory.mktemp("cifar")), images, labels, RAW_NAMES)


@pytest.fixture(scope="module")
def determined():
    return determined_cifar_model()


# ---------------------------------------------------------------- classifier

def test_classifier_equals_direct_computation_and_shards_sum_to_it():
    from clip.eval.zeroshot import build_classifier

    model = tiny_model(seed=3)
    names, templates = CLEAN_NAMES[:5], ["a photo of a {}.", "a drawing of the {}.", "{}"]
    classifier = build_classifier(model, names, templates, batch_size=4)  # batches cut across classes
    reference = direct_text_embeddings(model, names, templates).T
    assert classifier.shape == (model.config.embed_dim, len(names))
    np.testing.assert_allclose(classifier, reference, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(classifier, axis=0), 1.0, atol=1e-6)
    shards = [build_classifier(model, names, templates, shard=(r, 2)) for r in range(2)]
    assert not shards[0][:, 1].any() and not shards[1][:, 0].any()
    np.testing.assert_array_equal(shards[0] + shards[1], classifier)


def test_trim_padding_keeps_every_token_up_to_the_longest_end_token():
    from clip.eval.encode import trim_padding

    tokens = np.array([[49406, 7, 49407, 0, 0, 0], [49406, 5, 6, 8, 49407, 0]], np.int32)
    np.testing.assert_array_equal(trim_padding(tokens), tokens[:, :5])


def test_classifier_needs_classes_and_templates():
    from clip.eval.zeroshot import build_classifier

    with pytest.raises(UserError, match="at least one class name and one template"):
        build_classifier(tiny_model(), [], ["a {}"])


def test_count_batch_tallies_top1_top5_and_confusion():
    from clip.eval.zeroshot import Counts, count_batch, summarize

    logits = np.array([[9, 1, 2, 3, 4, 5, 6],    # label 0: right
                       [1, 9, 8, 7, 6, 5, 4],    # label 2: second place
                       [9, 8, 7, 6, 5, 4, 0],    # label 6: last place
                       [5, 5, 1, 1, 1, 1, 1]],   # label 1: tie with class 0 goes to the lower index
                      dtype=np.float32)
    counts = count_batch(logits, np.array([0, 2, 6, 1]))
    assert counts.top1.tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert counts.top5.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert counts.total.tolist() == [1, 1, 1, 0, 0, 0, 1]
    assert counts.confusion[2, 1] == 1 and counts.confusion[6, 0] == 1 and counts.confusion[1, 0] == 1
    back = Counts.from_vector(counts.add(counts).to_vector(), 7)  # what sharded ranks exchange
    assert back.top5.tolist() == [2, 2, 2, 0, 0, 0, 0] and back.confusion.sum() == 8
    summary = summarize(counts)
    assert summary["top1"] == 25.0 and summary["top5"] == 75.0 and summary["n"] == 4
    assert summary["per_class"] == [100.0, 0.0, 0.0, None, None, None, 0.0]


# ---------------------------------------------------------------- CIFAR-100 files

def test_cifar100_reads_the_python_format(cifar_root, drawn):
    from clip.data.cifar100 import load

    images, labels = drawn
    for path in (cifar_root, os.path.join(cifar_root, "cifar-100-python")):
        source = load(DatasetConfig(type="cifar100", path=path, split="test"))
        assert len(source) == len(labels)
        assert source.classnames == CLEAN_NAMES
        assert len(source.templates) == 18 and source.templates[0] == "a photo of a {}."
        image, label = source[9]
        assert image.mode == "RGB" and image.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(image), images[9])
        assert label == labels[9]
    custom = load(DatasetConfig(type="cifar100", path=cifar_root, split="test", templates=["itap of a {}."]))
    assert custom.templates == ["itap of a {}."]
    with pytest.raises(UserError, match=r"data.eval.templates: '\{\} and \{\}' is not a usable template"):
        load(DatasetConfig(type="cifar100", path=cifar_root, split="test", templates=["{} and {}"]))


def test_cifar100_sha256_check(cifar_root):
    from clip.data.cifar100 import load

    with open(os.path.join(cifar_root, "cifar-100-python", "test"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    good = DatasetConfig(type="cifar100", path=cifar_root, split="test",
                         sha256={"cifar-100-python/test": digest})
    assert len(load(good)) == len(RAW_NAMES) * PER_CLASS
    bad = DatasetConfig(type="cifar100", path=cifar_root, split="test", sha256={"cifar-100-python/test": "0" * 64})
    with pytest.raises(UserError, match=f"has digest {digest}, expected 0000"):
        load(bad)


def test_cifar100_user_errors(tmp_path, cifar_root):
    from clip.data.cifar100 import load

    with pytest.raises(UserError, match="does not exist"):
        load(DatasetConfig(type="cifar100", path=str(tmp_path / "nowhere"), split="test"))
    with pytest.raises(UserError, match="split: 'dev' is not a CIFAR-100 split"):
        load(DatasetConfig(type="cifar100", path=cifar_root, split="dev"))
    assert load(DatasetConfig(type="cifar100", path=cifar_root, split="val")).split == "test"  # the eval default
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"meta' does not exist \(expected CIFAR-100 python format"):
        load(DatasetConfig(type="cifar100", path=str(empty), split="test"))
    broken = tmp_path / "broken" / "cifar-100-python"
    broken.mkdir(parents=True)
    for name in ("meta", "test"):
        (broken / name).write_bytes(open(os.path.join(cifar_root, "cifar-100-python", name), "rb").read())
    (broken / "test").write_bytes((broken / "test").read_bytes()[:500])
    with pytest.raises(UserError, match="test' is not a readable CIFAR-100 pickle"):
        load(DatasetConfig(type="cifar100", path=str(broken.parent), split="test"))
    # A pickle that would run code when loaded is refused, not executed.
    marker = tmp_path / "pwned"
    (broken / "test").write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(UserError, match="unexpected object"):
        load(DatasetConfig(type="cifar100", path=str(broken.parent), split="test"))
    assert not marker.exists()


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------- accuracy with the determined model

def test_zero_shot_eval_gives_the_designed_accuracy(determined, cifar_root, drawn):
    from clip.eval.zeroshot import zero_shot_eval

    _, labels = drawn
    expected = expected_metrics(labels, len(RAW_NAMES), WRONG)
    cfg = DatasetConfig(type="cifar100", path=cifar_root, split="test")
    result = zero_shot_eval(determined, cfg, determined.config.image_size, batch_size=5)
    assert result["n"] == expected["n"] == 32
    assert result["top1"] == pytest.approx(expected["top1"]) == 84.375
    assert result["top5"] == pytest.approx(expected["top5"]) == 93.75
    assert list(result["per_class"]) == CLEAN_NAMES
    assert list(result["per_class"].values()) == pytest.approx(expected["per_class"])
    worst = result["worst"][0]
    assert worst == {"class": "apple", "top1": 50.0, "n": 4, "confused_with": "lawn mower", "confused_count": 1}
    assert result["skipped"] == 0 and result["classes"] == 8 and result["templates"] == 18


class BeatWatcher:
    """A classification source that, as the loop asks for the first image of each batch, notes whether the
    heartbeat file was touched since the previous batch began, then sets its time back to 0."""

    def __init__(self, source, batch_size: int, heartbeat: str):
        self.source, self.batch_size, self.heartbeat = source, batch_size, heartbeat
        self.classnames, self.templates = source.classnames, source.templates
        self.beaten: list = []

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        if i % self.batch_size == 0:
            self.beaten.append(os.path.exists(self.heartbeat) and os.stat(self.heartbeat).st_mtime > 0)
            if os.path.exists(self.heartbeat):
                os.utime(self.heartbeat, (0, 0))
        return self.source[i]

    def name(self, i):
        return self.source.name(i)


def test_evaluation_beats_the_launcher_heartbeat_every_batch(determined, cifar_root, tmp_path, monkeypatch):
    """`--hang-timeout` must not take a long evaluation for a hang: the loop touches LAUNCHER_HEARTBEAT_FILE
    after the classifier and after every image batch (in a job at most once a second; here every call)."""
    from clip.data import build_eval_source
    from clip.eval.zeroshot import evaluate_source
    from launcher import worker

    heartbeat = str(tmp_path / "heartbeat_0")
    monkeypatch.setenv(worker.HEARTBEAT_FILE, heartbeat)
    monkeypatch.setattr(worker, "_HEARTBEAT_EVERY", 0.0)
    source = BeatWatcher(build_eval_source(DatasetConfig(type="cifar100", path=cifar_root, split="test",
                                                         templates=["a photo of a {}."])), 5, heartbeat)
    result = evaluate_source(determined, source, determined.config.image_size, batch_size=5)
    assert result["n"] == 32 and source.beaten == [True] * 7  # 32 images in batches of 5
    assert os.stat(heartbeat).st_mtime > 0  # and after the last batch

    monkeypatch.delenv(worker.HEARTBEAT_FILE)
    os.remove(heartbeat)
    evaluate_source(determined, source, determined.config.image_size, batch_size=5)
    assert not os.path.exists(heartbeat)  # outside a launcher job: no file, nothing written


def test_evaluate_classifier_on_batches(determined, drawn):
    from clip.eval.zeroshot import build_classifier, count_predictions, summarize

    images, labels = drawn
    classifier = build_classifier(determined, CLEAN_NAMES, shipped_templates())
    pixels = preprocess(images, determined.config.image_size)
    result = summarize(count_predictions(determined, classifier, [(pixels[:20], labels[:20]), (pixels[20:], labels[20:])]))
    expected = expected_metrics(labels, len(RAW_NAMES), WRONG)
    assert result["top1"] == pytest.approx(expected["top1"]) and result["top5"] == pytest.approx(expected["top5"])
    assert result["per_class"] == pytest.approx(expected["per_class"])


def test_imagefolder_source_and_accuracy(tmp_path, determined, drawn):
    from clip.data.imagefolder import load
    from clip.eval.zeroshot import zero_shot_eval

    images, labels = drawn
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "val" / RAW_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    (tmp_path / "val" / "apple" / "notes.txt").write_text("not an image")
    cfg = DatasetConfig(type="imagefolder", path=str(tmp_path), split="val", templates=shipped_templates())
    source = load(cfg)
    assert sorted(source.classnames) == sorted(CLEAN_NAMES) and len(source) == 32
    result = zero_shot_eval(determined, cfg, determined.config.image_size, batch_size=8)
    # Folders are sorted by name, so the per-class table is keyed by name, not index.
    expected = expected_metrics(labels, len(RAW_NAMES), WRONG)
    assert result["top1"] == pytest.approx(expected["top1"]) and result["top5"] == pytest.approx(expected["top5"])
    assert result["per_class"] == pytest.approx(dict(zip(CLEAN_NAMES, expected["per_class"])))

    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(f"class {i}" for i in range(8)) + "\n")
    renamed = load(DatasetConfig(type="imagefolder", path=str(tmp_path / "val"), classnames_file=str(names_file)))
    assert renamed.classnames == [f"class {i}" for i in range(8)] and renamed.templates == ["a photo of a {}."]
    names_file.write_text("only one\n")
    with pytest.raises(UserError, match="has 1 names, expected one per class folder"):
        load(DatasetConfig(type="imagefolder", path=str(tmp_path / "val"), classnames_file=str(names_file)))
    with pytest.raises(UserError, match="'no placeholder' is not a usable template"):
        load(DatasetConfig(type="imagefolder", path=str(tmp_path / "val"), templates=["no placeholder"]))


def test_unreadable_images_are_skipped_and_counted(tmp_path, determined):
    from clip.eval.zeroshot import zero_shot_eval

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (20, 20), (10, 200, 30)).save(tmp_path / name / "good.jpg")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    cfg = DatasetConfig(type="imagefolder", path=str(tmp_path), split="none")
    result = zero_shot_eval(determined, cfg, determined.config.image_size, batch_size=4)
    assert result["n"] == 2 and result["skipped"] == 1


def test_compiled_encoders_match_eager_and_see_loaded_weights():
    import mindspore as ms

    from clip.eval.encode import encode_images, encode_texts

    model = tiny_model(seed=5)
    pixels = np.random.default_rng(0).normal(size=(6, 3, 64, 64)).astype(np.float32)
    eager = encode_images(model, pixels, 4)
    np.testing.assert_allclose(encode_images(model, pixels, 4, compiled=True), eager, atol=1e-5)
    texts = [f"a photo of a {n}." for n in CLEAN_NAMES[:5]]
    np.testing.assert_allclose(encode_texts(model, texts, 4, compiled=True),
                               encode_texts(model, texts, 4, compiled=False), atol=1e-5)
    model.visual.proj.set_data(ms.Tensor(model.visual.proj.asnumpy() * 2))
    np.testing.assert_allclose(encode_images(model, pixels, 4, compiled=True), 2 * eager, atol=2e-5)
