"""Real data files for the format tests: WebDataset shards in img2dataset's layout and image folders,
drawn with the shapes generator (so a tiny model can learn them) and encoded as real JPEG/PNG files."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from clip.data import shapes


def encode(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset_dir(root: Path, num_samples: int, per_shard: int, *, corrupt: int, uncaptioned: int,
                          seed: int = 3) -> list[str]:
    """`root/{00000..}.tar` as img2dataset writes them: `<key>.jpg` or `.png`, `<key>.txt`, `<key>.json` on
    every other sample, plus its `_stats.json` and `.parquet` side files. Sample `corrupt` holds bytes that
    are not an image and sample `uncaptioned` has no `.txt`. Returns the sample keys in order."""
    root.mkdir(parents=True, exist_ok=True)
    keys = []
    for shard in range(0, (num_samples + per_shard - 1) // per_shard):
        with tarfile.open(root / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * per_shard, min(num_samples, (shard + 1) * per_shard)):
                key = f"{shard:05d}{i % per_shard:04d}"
                keys.append(f"{shard:05d}.tar:{key}")
                img, _, captions = shapes.render(seed, "train", i)
                ext, fmt = ("png", "PNG") if i % 3 == 0 else ("jpg", "JPEG")
                data = b"this is not an image" * 10 if i == corrupt else encode(img, fmt)
                add_member(tar, f"{key}.{ext}", data)
                if i != uncaptioned:
                    add_member(tar, f"{key}.txt", captions[i % len(captions)].encode())
                if i % 2 == 0:
                    add_member(tar, f"{key}.json", json.dumps({"key": key, "url": f"http://x/{i}.jpg",
                                                               "status": "success"}).encode())
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": per_shard}))
        (root / f"{shard:05d}.parquet").write_bytes(b"PAR1")
    return keys


def write_image_folder(root: Path, classes: list[int], per_class: int, *, split: str, seed: int = 5) -> None:
    """root/<split>/<class name with underscores>/<n>.png|.jpg from the shapes generator's classes."""
    n = len(shapes.CLASSNAMES)
    for label in classes:
        folder = root / split / shapes.CLASSNAMES[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img, got, _ = shapes.render(seed, split, label + k * n)
            assert got == label
            fmt = "PNG" if k % 2 else "JPEG"
            (folder / f"{k:03d}.{fmt.lower().replace('jpeg', 'jpg')}").write_bytes(encode(img, fmt))
