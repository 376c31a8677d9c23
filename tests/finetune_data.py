"""Cheap data and a small model for the fine-tuning tests: an image folder of the built-in shapes whose classes
are the shapes' colours named in French, so a text tower trained on the shapes' English captions has never
seen its class names, and an open_clip model config smaller than clip_tiny (32 px, width 64 / 32)."""
import json
import os
from pathlib import Path

from clip.data.shapes import render

FRENCH = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet", "orange": "orange"}
TEMPLATES = ["une forme {}.", "un dessin {}."]
# (split, images, shapes seed): the folder's images are not the shapes the model was trained on
SPLITS = (("train", 192, 5), ("val", 48, 6))
MINI = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def colour(captions) -> str:
    """The colour word of a shapes caption list ("a red circle." is always the second)."""
    return captions[1].split()[1]


def write_colour_folder(root: Path) -> Path:
    """root/<split>/<French colour>/<i>.png for each split of SPLITS; returns root."""
    for split, count, seed in SPLITS:
        for i in range(count):
            image, _, captions = render(seed, "train", i)
            folder = root / split / FRENCH[colour(captions)]
            os.makedirs(folder, exist_ok=True)
            image.save(folder / f"{i:04d}.png")
    return root


def write_mini_config(path: Path) -> Path:
    path.write_text(json.dumps(MINI))
    return path


def folder_overrides(root: Path) -> list:
    """The colour folder as training data (its train split) and zero-shot evaluation (its val split)."""
    templates = json.dumps(TEMPLATES)
    return [f"data.train.type=imagefolder", f"data.train.path={root}", "data.train.split=train",
            f"data.train.templates={templates}", "data.eval.type=imagefolder", f"data.eval.path={root}",
            "data.eval.split=val", f"data.eval.templates={templates}", "train.eval_batch_size=48"]
