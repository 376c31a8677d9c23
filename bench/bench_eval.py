"""Zero-shot evaluation throughput, ViT-B/32 on CPU: ours (MindSpore) vs the torch reference, same run.

Both sides get the same random weights (tests/torch_reference.py's initialiser, copied into the MindSpore
model by parameter name), the same synthetic CIFAR-sized images (32x32, upscaled to 224 with OpenAI's
bicubic preprocessing) and the same prompts. Measured per side:
- images/s of the image phase (preprocess + encode + logits + top-1/top-5 tallies), which dominates a
  10000-image CIFAR-100 run; ours is `clip.zeroshot.evaluate_source` as `python -m clip.eval` runs it
  (compiled with ms.jit when there are >= 4 batches; the compile time is included);
- seconds to build the classifier (classes x 18 templates);
- our compile time (first call of a fresh compiled encoder minus a second call), hence our steady speed and
  the ratio projected to the 10000 images of CIFAR-100's test split.
The two sides' top-1 accuracies must agree within 2 images (same weights): the run fails otherwise.
Writes bench/results/eval.json.

    python bench/bench_eval.py [--images 128] [--classes 10] [--batch-size 32]
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from launcher.safe_write import write_json

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "eval.json"
sys.path.insert(0, str(REPO / "tests"))

MODEL = "clip_vit_b_32"


class SyntheticCifar:
    """CIFAR-shaped random images with labels: a ClassificationSource without files."""

    def __init__(self, n, classnames, templates, seed=0):
        rng = np.random.default_rng(seed)
        self.pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.labels = rng.integers(0, len(classnames), n)
        self.classnames, self.templates = classnames, templates

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return Image.fromarray(self.pixels[i]), int(self.labels[i])

    def name(self, i):
        return f"synthetic[{i}]"


def ours(source, state, batch_size):
    import mindspore as ms

    from clip.eval.zeroshot import evaluate_source
    from clip.model import create_model

    model = create_model(MODEL)
    for p in model.get_parameters():
        p.set_data(ms.Tensor(state[p.name].numpy().astype(np.float32)))
    model.set_train(False)
    result = evaluate_source(model, source, model.config.image_size, batch_size)
    compile_seconds = compile_time(model, source, batch_size)
    steady = result["n"] / max(result["image_seconds"] - compile_seconds, 1e-9)
    return {"images_per_second": result["n"] / result["image_seconds"], "image_seconds": result["image_seconds"],
            "compile_seconds": compile_seconds, "steady_images_per_second": steady,
            "classifier_seconds": result["classifier_seconds"], "top1": result["top1"], "top5": result["top5"]}


def compile_time(model, source, batch_size):
    """First call of a fresh compiled image encoder minus a second call on the same batch."""
    from clip.eval.encode import encode_in_batches, encoder, worth_compiling
    from clip.model.transforms import image_transform

    if not worth_compiling(len(source), batch_size):
        return 0.0
    transform = image_transform(model.config.image_size)
    pixels = np.stack([transform(source[i][0]) for i in range(batch_size)])
    encode = encoder(model, "image", compiled=True)
    times = []
    for _ in range(2):
        started = time.time()
        encode_in_batches(encode, pixels, batch_size, pad=True)
        times.append(time.time() - started)
    return max(times[0] - times[1], 0.0)


def reference(source, state, batch_size):
    import torch

    from clip.eval.zeroshot import Counts, count_batch, prompts_for, summarize
    from clip.model.tokenizer import tokenize
    from clip.model.transforms import image_transform

    import torch_reference

    model = torch_reference.build(state)
    transform = image_transform(model.shapes.image_size)
    with torch.no_grad():
        started = time.time()
        tokens = torch.from_numpy(tokenize(prompts_for(source.classnames, source.templates)).astype(np.int64))
        text = torch.cat([model.encode_text(tokens[i:i + 256]) for i in range(0, len(tokens), 256)])
        text = text / text.norm(dim=-1, keepdim=True)
        classifier = text.reshape(len(source.classnames), len(source.templates), -1).mean(dim=1)
        classifier = (classifier / classifier.norm(dim=-1, keepdim=True)).T
        classifier_seconds = time.time() - started
        started = time.time()
        counts = Counts.zeros(len(source.classnames))
        for start in range(0, len(source), batch_size):
            items = [source[i] for i in range(start, min(start + batch_size, len(source)))]
            pixels = torch.from_numpy(np.stack([transform(img) for img, _ in items]))
            features = model.encode_image(pixels)
            logits = 100.0 * (features / features.norm(dim=-1, keepdim=True)) @ classifier
            counts = counts.add(count_batch(logits.numpy(), np.array([label for _, label in items])))
        image_seconds = time.time() - started
    result = summarize(counts)
    return {"images_per_second": result["n"] / image_seconds, "image_seconds": image_seconds,
            "classifier_seconds": classifier_seconds, "top1": result["top1"], "top5": result["top5"]}


def projected_ratio(mine, ref, n):
    """Throughput ratio for an n-image evaluation: our compile is paid once, then steady speed."""
    ours_seconds = mine["compile_seconds"] + n / mine["steady_images_per_second"]
    return (n / ours_seconds) / ref["images_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10, help="first N CIFAR-100 classes (x 18 templates)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    from clip.data.cifar100 import shipped_prompts
    from clip.model.architectures import get_config

    import torch_reference

    names, templates = shipped_prompts()
    source = SyntheticCifar(args.images, names[:args.classes], templates)
    state = torch_reference.random_state_dict(torch_reference.Shapes.of(get_config(MODEL)), seed=0)
    load_before = os.getloadavg()
    ref = reference(source, state, args.batch_size)
    mine = ours(source, state, args.batch_size)
    if abs(mine["top1"] - ref["top1"]) > 200.0 / args.images:  # more than 2 images: not the same model
        raise SystemExit(f"predictions differ: top-1 ours {mine['top1']}, torch {ref['top1']}")
    report = {
        "what": "zero-shot evaluation throughput, image phase (preprocess + encode + tally), images/s",
        "model": MODEL, "images": args.images, "batch_size": args.batch_size, "classes": args.classes,
        "templates": len(templates), "ours": mine, "torch_reference": ref,
        "ratio_images_per_second": mine["images_per_second"] / ref["images_per_second"],
        "ratio_steady_images_per_second": mine["steady_images_per_second"] / ref["images_per_second"],
        "ratio_projected_cifar100_test": projected_ratio(mine, ref, 10000), "target_ratio": 1.0,
        "ratio_classifier_speed": ref["classifier_seconds"] / mine["classifier_seconds"],
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(), "platform": platform.platform(),
                    "torch": torch.__version__, "mindspore": __import__("mindspore").__version__, "torch_threads": torch.get_num_threads()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(str(RESULTS), report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
