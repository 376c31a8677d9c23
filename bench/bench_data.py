"""Input pipeline throughput per CPU core, per data format: decode + OpenAI preprocessing (224 px) + tokenize
+ batch, the work that feeds one training step.

Data: photograph-like 500 x 375 JPEGs (quality 90; smooth colour gradients, low-frequency texture, soft
shapes and sensor-like noise, so they compress like photos, ~40-70 KB), made here because nothing is
downloaded. The same images are read as
  csv         a CSV table of JPEG files (the path training had before WebDataset)
  webdataset  img2dataset-style tar shards through clip.data.webdataset (offset index, pread)
  mindrecord  the shards packed by clip.data.pack, read by MindDataset
  anchor      the plain `webdataset` library reader + PIL + the same transform and tokenizer
Each measurement runs in a fresh process pinned to ONE core (sched_setaffinity), loader workers 1, batch
32, over a warm epoch (a first epoch warms page cache and imports); the formats alternate in rounds so
they share the machine's minute. The figure is images per CPU-second of the process (all its threads):
that is images/s per core, and unlike the pinned wall-clock rate (also recorded) it does not drop when
other jobs share the core. Writes bench/results/data.json.

    flock /tmp/heavy.lock python bench/bench_data.py [--images 384] [--rounds 3]
"""
import argparse
import csv
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "data.json"
FORMATS = ("csv", "webdataset", "mindrecord", "anchor")
BATCH, SIZE, CONTEXT = 32, 224, 77
WORDS = "a dog cat red blue green house tree beach city street man woman child boat car sunset mountain".split()


def photo(rng: np.random.Generator, width: int = 500, height: int = 375):
    """A photograph-like image: gradient sky/ground, blurred texture, a few soft objects, fine noise."""
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(40, 230, 3), rng.uniform(20, 200, 3)
    t = (y / height)[..., None]
    img = top * (1 - t) + bottom * t + rng.uniform(-30, 30, 3) * (x / width)[..., None]
    low = rng.normal(0, 1, (height // 25 + 2, width // 25 + 2, 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray(((low - low.min()) / np.ptp(low) * 255).astype(np.uint8))
                         .resize((width, height), Image.Resampling.BICUBIC), np.float32)
    img = np.clip(img + (texture - 128) * 0.35, 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(15, 110)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=colour)
        else:
            draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in rng.uniform(0, 6.28, 5)], fill=colour)
    pil = pil.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(pil, np.float32) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_data(root: Path, n: int) -> dict:
    """JPEG files + CSV, two tar shards in img2dataset layout, and a MindRecord pack of them."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "shards").mkdir(exist_ok=True)
    rows, sizes = [], []
    tars = [tarfile.open(root / "shards" / f"{k:05d}.tar", "w", format=tarfile.USTAR_FORMAT) for k in range(2)]
    for i in range(n):
        buf = io.BytesIO()
        photo(rng).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        sizes.append(len(data))
        caption = "a photo of " + " ".join(rng.choice(WORDS, int(rng.integers(4, 12))))
        (root / "images" / f"{i:06d}.jpg").write_bytes(data)
        rows.append((f"images/{i:06d}.jpg", caption))
        for name, payload in ((f"{i:09d}.jpg", data), (f"{i:09d}.txt", caption.encode()),
                              (f"{i:09d}.json", json.dumps({"key": f"{i:09d}"}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tars[i * 2 // n].addfile(info, io.BytesIO(payload))
    for tar in tars:
        tar.close()
    with open(root / "data.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    subprocess.run([sys.executable, "-m", "clip.data.pack", str(root / "shards"), str(root / "mindrecord"),
                    "--shards", "2"], check=True, cwd=REPO, capture_output=True)
    return {"images": n, "mean_jpeg_bytes": int(statistics.mean(sizes))}


def ours(fmt: str, root: Path):
    """Epoch -> batches through the training pipeline (the source, with its index, is opened once)."""
    from clip.data import DatasetConfig, build_train_source
    from clip.data.pipeline import train_batches

    path = {"csv": root / "data.csv", "webdataset": root / "shards", "mindrecord": root / "mindrecord"}[fmt]
    source = build_train_source(DatasetConfig(type=fmt, path=str(path)))
    return lambda epoch: train_batches(source, image_size=SIZE, context_length=CONTEXT, batch_size=BATCH, rank=0,
                                       world_size=1, epoch=epoch, seed=0, num_workers=1)


def anchor(root: Path, epoch: int):
    """The `webdataset` library's reader with PIL, doing the same decode, transform, tokenize and batching."""
    import webdataset as wds

    import clip

    transform = clip.image_transform(SIZE)

    def prepare(sample):
        image, text = sample
        return (np.asarray(transform(image), np.float32),
                clip.tokenize([text], context_length=CONTEXT)[0].astype(np.int32))

    def collate(samples):
        return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])

    urls = [str(p) for p in sorted((root / "shards").glob("*.tar"))]
    return (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg", "txt")
            .map(prepare).batched(BATCH, collation_fn=collate, partial=False))


def child(fmt: str, root: Path) -> dict:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    make = (lambda e: anchor(root, e)) if fmt == "anchor" else ours(fmt, root)
    warm = sum(1 for _ in make(0))  # warm-up epoch: imports, page cache, index load
    assert warm > 0, f"{fmt}: the warm-up epoch yielded no batch"
    start, cpu0, n = time.perf_counter(), cpu_seconds(), 0
    for images, tokens in make(1):
        assert images.shape[1:] == (3, SIZE, SIZE) and tokens.shape[1:] == (CONTEXT,)
        n += images.shape[0]
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    return {"format": fmt, "images": n, "wall_seconds": seconds, "cpu_seconds": cpu,
            "images_per_cpu_second": n / cpu, "images_per_s_pinned": n / seconds}


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (MindSpore's pipeline threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default="/tmp/bench_data", help="where the generated data is kept")
    parser.add_argument("--child", nargs=2, metavar=("FORMAT", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0
    root = Path(args.data)
    meta_path = root / "meta.json"
    if not meta_path.exists() or json.loads(meta_path.read_text())["images"] != args.images:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(make_data(root, args.images)))
    meta = json.loads(meta_path.read_text())
    env = {**os.environ, "GLOG_v": "3"}
    runs = {fmt: [] for fmt in FORMATS}
    for r in range(args.rounds):
        for fmt in FORMATS:
            out = subprocess.run([sys.executable, __file__, "--child", fmt, str(root)], cwd=REPO, env=env,
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[fmt].append(row)
            print(f"round {r}: {fmt:<11} {row['images_per_cpu_second']:7.1f} images per CPU-second "
                  f"({row['images_per_s_pinned']:.1f}/s wall, pinned to one core)", flush=True)
    summary = {fmt: round(statistics.median(r["images_per_cpu_second"] for r in v), 1) for fmt, v in runs.items()}
    wall = {fmt: round(statistics.median(r["images_per_s_pinned"] for r in v), 1) for fmt, v in runs.items()}
    payload = {
        "what": "decode + OpenAI preprocessing (224 px) + tokenize + batch 32, one core, warm epoch, median of rounds; "
                "images per CPU-second of the process (all threads) is images/s per core and holds on a loaded "
                "machine; the pinned wall-clock rate only on a quiet one",
        "data": {**meta, "width": 500, "height": 375, "jpeg_quality": 90},
        "images_per_s_per_core": summary,
        "images_per_s_pinned_wall": wall,
        "ratio_to_anchor": {fmt: round(summary[fmt] / summary["anchor"], 2) for fmt in FORMATS},
        "runs": runs,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_at_end": os.getloadavg()[0]},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    from launcher.safe_write import write_json

    write_json(str(RESULTS), payload)
    print(json.dumps({"images_per_s_per_core": summary, "ratio_to_anchor": payload["ratio_to_anchor"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
