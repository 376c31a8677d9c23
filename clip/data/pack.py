"""Pack any training source into MindRecord shards: `python -m clip.data.pack SRC OUT --format mindrecord --shards N`.

Sample k of the source becomes record k (shard j holds a contiguous range), with the source's own encoded
image bytes, all its captions and an ok flag; every image is decoded once here, and the unreadable or
caption-less ones are listed by name in the manifest, so training applies the same skip-and-replace rule
without decoding them. Each shard is written under OUT/.partial/, read back and checked against the digest
of what was written, and only then moved into OUT with a `.done` note; an interrupted run leaves no
half-written shard in OUT, and rerunning the same command keeps the finished shards and writes the rest.
`manifest.json`, written last, is what makes OUT readable as `type: mindrecord`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import Optional

from clip.data import build_train_source
from clip.data.webdataset import write_pending_indexes
from clip.data.base import CaptionSource, DatasetConfig, UnreadableImage, decode_image
from clip.data.mindrecord import FORMAT, MANIFEST, SCHEMA, VERSION, read_manifest, shard_file
from launcher.errors import ArgumentParser, UserError, exit_on_user_error, integer, path, text
from launcher.safe_write import write_json

FORMATS = ("mindrecord",)
PACKABLE = ("webdataset", "csv", "flickr8k", "imagefolder", "cifar100", "shapes", "mindrecord")
PARTIAL = ".partial"
WRITE_CHUNK = 256
PAGE_SIZE = 1 << 23  # MindRecord pads each page; its 32 MB default makes small shards huge
NO_IMAGE = b"\0"  # MindRecord cannot store an empty blob


def detect_type(src: str) -> str:
    """The source type a path most likely is (pass --type when it guesses wrong)."""
    if "{" in src or src.endswith(".tar"):
        return "webdataset"
    if os.path.isfile(src) and src.lower().endswith((".csv", ".tsv")):
        return "csv"
    if not os.path.isdir(src):
        raise UserError(f"SRC: {src!r} does not exist (expected a shard directory or pattern, a .csv/.tsv file, "
                        f"or a Flickr8k, CIFAR-100 or image-folder directory)")
    names = os.listdir(src)
    if MANIFEST in names:
        return "mindrecord"
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(os.path.isfile(os.path.join(src, d, "Flickr8k.token.txt")) for d in ("", "Flickr8k_text")):
        return "flickr8k"
    if "cifar-100-python" in names or {"meta", "train"} <= set(names):
        return "cifar100"
    return "imagefolder"


def shard_ranges(num_samples: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) sample ranges of the shards, sizes differing by at most one."""
    return [(k * num_samples // shards, (k + 1) * num_samples // shards) for k in range(shards)]


def record_digest(h, index: int, image: bytes, captions: str) -> None:
    h.update(index.to_bytes(8, "little", signed=True))
    h.update(len(image).to_bytes(8, "little"))
    h.update(image)
    h.update(captions.encode("utf-8"))


def make_record(source: CaptionSource, i: int) -> tuple[dict, Optional[str]]:
    """Record i and, if the sample is unusable for training, why."""
    name, reason, image = source.name(i), None, NO_IMAGE
    try:
        image = source.encoded_image(i)
        decode_image(image, name)
    except UnreadableImage as exc:
        reason = exc.reason
    except OSError as exc:
        reason = exc.strerror or str(exc)
    captions = source.captions(i)
    if reason is None and not captions:
        reason = "no caption"
    image = image or NO_IMAGE
    return ({"index": i, "name": name, "image": image, "captions": json.dumps(captions, ensure_ascii=False),
             "ok": int(reason is None)}, reason)


def read_back_digest(path: str) -> tuple[int, str]:
    """(records, digest) of a written shard, read through MindDataset like training reads it."""
    import mindspore.dataset as ds

    h, n = hashlib.sha256(), 0
    data = ds.MindDataset([path], columns_list=["index", "image", "captions"], shuffle=False)
    for row in data.create_dict_iterator(output_numpy=True, num_epochs=1):
        record_digest(h, int(row["index"]), row["image"].tobytes(), str(row["captions"]))
        n += 1
    return n, h.hexdigest()


def write_shard(source: CaptionSource, out: str, k: int, start: int, end: int, progress) -> dict:
    """Shard k (samples start..end-1) written in OUT/.partial, verified, then moved into OUT; its note."""
    from mindspore.mindrecord import FileWriter

    partial = os.path.join(out, PARTIAL)
    os.makedirs(partial, exist_ok=True)
    name = shard_file(k)
    tmp = os.path.join(partial, name)
    for stale in (tmp, tmp + ".db"):
        if os.path.exists(stale):
            os.remove(stale)
    writer = FileWriter(tmp, shard_num=1, overwrite=True)
    writer.set_page_size(PAGE_SIZE)
    writer.add_schema(SCHEMA, "clip image-caption pairs")
    h, unreadable, rows = hashlib.sha256(), [], []
    for i in range(start, end):
        record, reason = make_record(source, i)
        if reason is not None:
            unreadable.append([i, record["name"], reason])
            progress.write(f"unreadable sample {record['name']} ({reason}): kept, replaced when training")
        record_digest(h, i, record["image"], record["captions"])
        rows.append(record)
        if len(rows) == WRITE_CHUNK:
            writer.write_raw_data(rows)
            rows = []
        progress.update(1)
    if rows:
        writer.write_raw_data(rows)
    writer.commit()
    count, digest = read_back_digest(tmp)
    if count != end - start or digest != h.hexdigest():
        raise UserError(f"{tmp}: read back {count} records with digest {digest[:12]}, wrote {end - start} with "
                        f"{h.hexdigest()[:12]}; the disk or MindRecord writer lost data (kept for inspection)")
    os.replace(tmp + ".db", os.path.join(out, name + ".db"))
    os.replace(tmp, os.path.join(out, name))
    return {"file": name, "first": start, "samples": end - start, "bytes": os.path.getsize(os.path.join(out, name)),
            "sha256": h.hexdigest(), "unreadable": unreadable}


def finished_note(out: str, k: int, plan: dict) -> Optional[dict]:
    """Shard k's note from an earlier run if that shard is complete for this very plan."""
    path = os.path.join(out, shard_file(k) + ".done")
    try:
        with open(path, encoding="utf-8") as f:
            note = json.load(f)
        complete = (note["plan"] == plan and os.path.getsize(os.path.join(out, note["file"])) == note["bytes"]
                    and os.path.isfile(os.path.join(out, note["file"] + ".db")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return note if complete else None


def pack(cfg: DatasetConfig, out: str, shards: int) -> dict:
    """Pack the source `cfg` into `out`; returns the manifest."""
    source = build_train_source(cfg)
    n = len(source)
    if not 1 <= shards <= n:
        raise UserError(f"--shards: {shards} is not between 1 and the source's {n} samples")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"OUT: {out!r} exists and is not a directory")
    plan = {"type": cfg.type, "path": os.path.abspath(cfg.path) if cfg.path else None, "split": cfg.split,
            "samples": n, "shards": shards}
    if os.path.isfile(os.path.join(out, MANIFEST)):
        manifest = read_manifest(out)
        if manifest.get("plan") != plan:
            raise UserError(f"OUT: {out!r} already holds a finished pack of {manifest.get('plan')}; "
                            f"choose another directory or delete it")
        print(f"{out}: already packed ({n} samples in {shards} shards, sizes checked)", flush=True)
        return manifest
    write_pending_indexes()  # the source's shard indexes, built while checking
    os.makedirs(out, exist_ok=True)

    from tqdm import tqdm

    notes = []
    with tqdm(total=n, desc=f"packing {cfg.type} -> {out}", unit="img", file=sys.stderr) as progress:
        for k, (start, end) in enumerate(shard_ranges(n, shards)):
            note = finished_note(out, k, plan)
            if note is None:
                note = write_shard(source, out, k, start, end, progress)
                write_json(os.path.join(out, shard_file(k) + ".done"), {**note, "plan": plan})
            else:
                progress.write(f"{note['file']}: finished by an earlier run, kept")
                progress.update(end - start)
            notes.append(note)
    unreadable = [u for note in notes for u in note["unreadable"]]
    manifest = {"format": FORMAT, "version": VERSION, "plan": plan, "samples": n,
                "shards": [{key: note[key] for key in ("file", "first", "samples", "bytes", "sha256")}
                           for note in notes],
                "unreadable": [[i, name] for i, name, _ in unreadable]}
    write_json(os.path.join(out, MANIFEST), manifest)
    for k in range(shards):
        os.remove(os.path.join(out, shard_file(k) + ".done"))
    shutil.rmtree(os.path.join(out, PARTIAL), ignore_errors=True)
    print(f"packed {n} samples into {shards} MindRecord shard(s) in {out}, every shard read back and verified"
          + (f"; {len(unreadable)} unreadable sample(s) listed in {MANIFEST}" if unreadable else ""), flush=True)
    return manifest


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m clip.data.pack", description=__doc__.splitlines()[0])
    parser.add_argument("src", metavar="SRC", type=text(nonempty=True),
                        help="training source: shard directory or brace pattern, .csv/.tsv, "
                        "Flickr8k, CIFAR-100 or image-folder directory")
    parser.add_argument("out", metavar="OUT", type=path("output_dir"), help="output directory")
    parser.add_argument("--format", choices=FORMATS, default="mindrecord")
    parser.add_argument("--shards", type=integer(ge=1, le=1000, why="MindRecord writes at most 1000 files"), default=1,
                        help="number of MindRecord files (default 1)")
    parser.add_argument("--type", choices=PACKABLE, help="source type (default: guessed from SRC)")
    parser.add_argument("--split", default="train", type=text(), help="split of Flickr8k, CIFAR-100 or an image folder")
    parser.add_argument("--csv-image-key", default="filepath", type=text(nonempty=True))
    parser.add_argument("--csv-caption-key", default="title", type=text(nonempty=True))
    parser.add_argument("--index-dir", type=path("output_dir"),
                        help="webdataset: where shard indexes go (default beside the shards)")
    return parser


@exit_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = DatasetConfig(type=args.type or detect_type(args.src), path=args.src, split=args.split,
                        csv_image_key=args.csv_image_key, csv_caption_key=args.csv_caption_key,
                        index_dir=args.index_dir)
    try:
        pack(cfg, args.out, args.shards)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished shards are kept in {args.out}; rerun the same command to write the rest",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
