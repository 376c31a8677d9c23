"""Evaluation sets written for the tests, in the layouts benchmarks ship: ImageNet's val folders (1000 wnid
folders, ImageNetV2's numbered folders) and CLIP_benchmark's WebDataset tars; plus the reference metrics
computed straight from a model's encoders in numpy, to compare the project's numbers against."""
import io
import json
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def imagenet_wnids() -> list:
    data = json.loads(resources.files("clip").joinpath("assets/imagenet_prompts.json").read_text("utf-8"))
    return list(data["wnids"])


def random_images(n: int, size: int = 24, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def encoded(image: np.ndarray, ext: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=FORMATS[ext], **({"lossless": True} if ext == "webp" else {}))
    return buf.getvalue()


def write_class_folders(root: Path, folders: list, filled: dict) -> None:
    """One folder per name; filled maps a folder to its images (PNG files); the others stay empty."""
    for name in folders:
        (root / name).mkdir(parents=True)
        for k, image in enumerate(filled.get(name, [])):
            Image.fromarray(image).save(root / name / f"img_{k}.png")


def write_clip_benchmark(root: Path, samples: list, *, kind=None, classnames=None, templates=None,
                         nshards: int = 2, split: str = "test") -> Path:
    """CLIP_benchmark's layout: samples are {extension: bytes} dicts, dealt to the shards in turn."""
    folder = root / split
    folder.mkdir(parents=True)
    if kind is not None:
        (root / "dataset_type.txt").write_text(kind + "\n")
    if classnames is not None:
        (root / "classnames.txt").write_text("".join(c + "\n" for c in classnames))
    if templates is not None:
        (root / "zeroshot_classification_templates.txt").write_text("".join(t + "\n" for t in templates))
    (folder / "nshards.txt").write_text(f"{nshards}\n")
    for s in range(nshards):
        with tarfile.open(folder / f"{s}.tar", "w") as tar:
            for i in range(s, len(samples), nshards):
                for ext, data in samples[i].items():
                    info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# ---------------------------------------------------------------- reference metrics (numpy only)

def reference_image_features(model, images: list) -> np.ndarray:
    """L2-normalised image embeddings, one encode_image call on the preprocessed images."""
    import mindspore as ms

    from clip.model.transforms import image_transform

    t = image_transform(model.config.image_size)
    pixels = np.stack([t(Image.fromarray(a)) for a in images]).astype(np.float32)
    f = model.encode_image(ms.Tensor(pixels)).asnumpy().astype(np.float64)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def reference_text_features(model, texts: list) -> np.ndarray:
    """L2-normalised text embeddings of full-length (untrimmed) token rows."""
    import mindspore as ms

    from clip.model.tokenizer import tokenize

    f = model.encode_text(ms.Tensor(tokenize(texts, model.config.context_length))).asnumpy().astype(np.float64)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def reference_classifier(model, classnames: list, templates: list) -> np.ndarray:
    """[C, E]: per class, mean of the normalised prompt embeddings, renormalised (CLIP's protocol)."""
    f = reference_text_features(model, [t.format(c) for c in classnames for t in templates])
    mean = f.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def reference_classification(scores: np.ndarray, labels: np.ndarray) -> dict:
    """acc1, acc5 and the mean over present classes of their recall, as fractions."""
    top5 = np.argsort(-scores, axis=1)[:, :5]
    hit1 = top5[:, 0] == labels
    recalls = [hit1[labels == c].mean() for c in np.unique(labels)]
    return {"acc1": hit1.mean(), "acc5": (top5 == labels[:, None]).any(axis=1).mean(),
            "mean_per_class_recall": float(np.mean(recalls))}


def reference_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes of average precision: for each class, the precision at the rank of each positive,
    averaged over its positives (0 for a class without positives)."""
    aps = []
    for c in range(scores.shape[1]):
        ranked = targets[np.argsort(-scores[:, c]), c]
        hits = np.flatnonzero(ranked)
        aps.append(np.mean([(ranked[:r + 1].sum()) / (r + 1) for r in hits]) if len(hits) else 0.0)
    return float(np.mean(aps))


def reference_retrieval(image_f: np.ndarray, text_f: np.ndarray, owner: np.ndarray, ks) -> dict:
    """CLIP_benchmark's recalls: a text finds its image in the top k; an image finds any of its texts."""
    sim = image_f @ text_f.T
    out = {}
    for k in ks:
        image_top = np.argsort(-sim.T, axis=1)[:, :k]
        out[f"image_retrieval_recall@{k}"] = float(np.mean([owner[t] in image_top[t] for t in range(len(owner))]))
        text_top = np.argsort(-sim, axis=1)[:, :k]
        out[f"text_retrieval_recall@{k}"] = float(np.mean(
            [np.isin(np.flatnonzero(owner == i), text_top[i]).any() for i in range(len(image_f))]))
    return out
