"""`python -m clip.predict` and `clip.pipeline(...)` with a determined model: the label probabilities are known
in advance (softmax of exp(logit_scale) x the designed cosines)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from launcher.errors import UserError

from cifar_files import draw_images
from determined_model import determine, preprocess, tiny_model

LABELS = ["red square", "green circle", "blue triangle"]
TEMPLATE = "a photo of a {}."


def designed(i: int) -> np.ndarray:
    """Image i: its own label 1.0, the next label 0.6, the one after 0.2."""
    s = np.zeros(3)
    s[i], s[(i + 1) % 3], s[(i + 2) % 3] = 1.0, 0.6, 0.2
    return s


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import mindspore as ms

    from clip.model.tokenizer import tokenize

    images, _ = draw_images(3, 1, seed=11)
    model = tiny_model(seed=4)
    feats = model.encode_text(ms.Tensor(tokenize([TEMPLATE.format(lb) for lb in LABELS],
                                                 model.config.context_length))).asnumpy().astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    scores = np.stack([designed(i) for i in range(3)])
    targets = determine(model, preprocess(images, model.config.image_size), feats, scores)
    scale = np.exp(float(model.logit_scale.asnumpy()))
    cosines = scores / np.linalg.norm(targets, axis=1, keepdims=True)
    expected = np.exp(scale * cosines) / np.exp(scale * cosines).sum(axis=1, keepdims=True)
    root = tmp_path_factory.mktemp("predict")
    (root / "imgs").mkdir()
    paths = []
    for i, image in enumerate(images):
        paths.append(str(root / "imgs" / f"img{i}.png"))
        Image.fromarray(image).save(paths[-1])
    ckpt = root / "model.ckpt"
    ms.save_checkpoint(model, str(ckpt))
    return {"model": model, "images": images, "paths": paths, "ckpt": str(ckpt), "expected": expected,
            "root": root}


def check(preds, i, expected, top_k=3):
    order = np.argsort(-expected[i])[:top_k]
    assert [p["label"] for p in preds] == [LABELS[j] for j in order]
    assert [p["score"] for p in preds] == pytest.approx(expected[i][order], abs=1e-4)


def test_pipeline_scores_are_the_designed_probabilities(setup):
    import clip

    pipe = clip.pipeline("zero_shot_image_classification", model=setup["model"], candidate_labels=LABELS)
    image = Image.fromarray(setup["images"][0])
    preds = pipe(image)
    check(preds, 0, setup["expected"])
    assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-6)
    batch = pipe([setup["paths"][1], Image.fromarray(setup["images"][2])])
    check(batch[0], 1, setup["expected"])
    check(batch[1], 2, setup["expected"])
    check(pipe(setup["paths"][2], top_k=2), 2, setup["expected"], top_k=2)
    # Labels given at call time, in another order, give the same probabilities per label.
    again = {p["label"]: p["score"] for p in pipe(image, candidate_labels=LABELS[::-1])}
    assert again == pytest.approx({p["label"]: p["score"] for p in preds}, abs=1e-6)


def test_pipeline_loads_models_by_checkpoint_or_preset_name(setup):
    from clip.eval.predict import pipeline

    by_path = pipeline(model=setup["ckpt"], candidate_labels=LABELS)
    assert by_path.model.config.vision_width == 128  # clip_tiny, inferred from the checkpoint's shapes
    check(by_path(setup["paths"][0]), 0, setup["expected"])
    by_name = pipeline(model="clip_tiny", checkpoint=setup["ckpt"], candidate_labels=LABELS)
    check(by_name(setup["paths"][1]), 1, setup["expected"])


def test_pipeline_user_errors(setup, tmp_path):
    from clip.eval.predict import pipeline

    with pytest.raises(UserError, match="not supported"):
        pipeline("image_captioning", model=setup["model"])
    with pytest.raises(UserError, match="neither a preset"):
        pipeline(model="clip_huge", candidate_labels=LABELS)
    pipe = pipeline(model=setup["model"])
    with pytest.raises(UserError, match="candidate_labels: not given"):
        pipe(setup["paths"][0])
    with pytest.raises(UserError, match="label 'a' is given twice"):
        pipe(setup["paths"][0], candidate_labels=["a", "b", "a"])
    with pytest.raises(UserError, match="does not exist"):
        pipe(str(tmp_path / "missing.png"), candidate_labels=LABELS)


def test_any_pil_mode_and_format(setup, tmp_path):
    from clip.eval.predict import pipeline

    pipe = pipeline(model=setup["model"], candidate_labels=LABELS)
    rgb = Image.fromarray(setup["images"][1])
    lossless = {"rgba.png": rgb.convert("RGBA"), "plain.bmp": rgb, "plain.tiff": rgb, "plain.webp": rgb}
    grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    others = {"photo.jpg": rgb, "palette.gif": rgb.convert("P"), "grey.png": rgb.convert("L"),
              "cmyk.jpg": rgb.convert("CMYK"), "bits.png": rgb.convert("1"), "la.png": rgb.convert("LA"),
              "deep.png": Image.fromarray(grey), "float.tiff": Image.fromarray(grey.astype(np.float32) / 65535)}
    for name, image in {**lossless, **others}.items():
        image.save(tmp_path / name, **({"lossless": True} if name.endswith(".webp") else {}))
    for preds in pipe([str(tmp_path / name) for name in lossless]):
        check(preds, 1, setup["expected"])
    results = dict(zip(others, pipe([str(tmp_path / name) for name in others])))
    for preds in results.values():
        assert sorted(p["label"] for p in preds) == sorted(LABELS)
        assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-5)
    # 16-bit and float grey are scaled to 8 bits, not clipped: they give the 8-bit grey image's answer.
    for name in ("deep.png", "float.tiff"):
        assert [p["label"] for p in results[name]] == [p["label"] for p in results["grey.png"]]
        assert [p["score"] for p in results[name]] == pytest.approx([p["score"] for p in results["grey.png"]],
                                                                    abs=1e-3)


def run_predict(args, cwd):
    return subprocess.run([sys.executable, "-m", "clip.predict", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.processes
def test_cli_json_over_a_directory_and_script_table(setup, tmp_path, repo_root):
    proc = run_predict(["--checkpoint", setup["ckpt"], "--image", str(setup["root"] / "imgs"),
                        "--labels", ", ".join(LABELS), "--top-k", "2", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert [row["image"] for row in out] == setup["paths"]
    for i, row in enumerate(out):
        check(row["predictions"], i, setup["expected"], top_k=2)
    proc = subprocess.run(["bash", str(repo_root / "scripts" / "run_predict.sh"), setup["ckpt"], setup["paths"][2],
                           ",".join(LABELS), "--model", "clip_tiny", "--template", TEMPLATE], cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == setup["paths"][2] and len(lines) == 4
    assert lines[1].split(None, 1)[1] == LABELS[2] and float(lines[1].split()[0]) == pytest.approx(
        setup["expected"][2].max(), abs=1e-4)


@pytest.mark.processes
@pytest.mark.parametrize("args, message", [
    (["--image", "{root}/nope.png"], "error: python -m clip.predict: argument --image: '{root}/nope.png' does not exist"),
    (["--image", "{root}/junk.png"], "error: image '{root}/junk.png' cannot be read"),
    (["--labels", "cat,,dog"], "error: --labels: ['cat', '', 'dog'] must be a non-empty list"),
    (["--labels", "cat,dog,cat"], "error: --labels: label 'cat' is given twice"),
    (["--template", "a photo"], "error: --template 'a photo': expected a text with exactly one '{{}}'"),
    (["--top-k", "0"], "error: python -m clip.predict: argument --top-k: 0 must be at least 1"),
], ids=["missing", "unreadable", "empty-label", "duplicate", "template", "top-k"])
def test_cli_user_errors(setup, tmp_path, args, message):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    base = {"--checkpoint": setup["ckpt"], "--image": setup["paths"][0], "--labels": "cat,dog"}
    base.update({args[0]: args[1].format(root=tmp_path)})
    argv = [x for kv in base.items() for x in kv]
    proc = run_predict(argv, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message.format(root=tmp_path)), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


def test_a_model_with_a_logit_bias_scores_each_label_by_its_own_sigmoid(setup):
    """SigLIP: the probabilities its loss trains, sigmoid(exp(logit_scale) * cosine + logit_bias) per label,
    independent of the other labels (they need not sum to 1)."""
    import mindspore as ms

    import clip
    from clip.model import create_model
    from clip.model.tokenizer import tokenize

    ms.set_seed(4)
    model = create_model("clip_tiny", init_logit_bias=-2.0, init_logit_scale=np.log(10.0))
    model.set_train(False)
    assert float(model.logit_bias.asnumpy()) == -2.0 and float(model.logit_scale.asnumpy()) == pytest.approx(np.log(10))
    feats = model.encode_text(ms.Tensor(tokenize([TEMPLATE.format(lb) for lb in LABELS],
                                                 model.config.context_length))).asnumpy().astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    scores = np.stack([designed(i) for i in range(3)])
    targets = determine(model, preprocess(setup["images"], model.config.image_size), feats, scores)
    cosines = scores / np.linalg.norm(targets, axis=1, keepdims=True)
    expected = 1 / (1 + np.exp(-(10.0 * cosines - 2.0)))
    pipe = clip.pipeline("zero_shot_image_classification", model=model, candidate_labels=LABELS)
    for i in range(3):
        check(pipe(Image.fromarray(setup["images"][i])), i, expected)
    assert abs(sum(p["score"] for p in pipe(Image.fromarray(setup["images"][0]))) - 1.0) > 0.1
