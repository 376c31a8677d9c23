"""WebDataset shards as img2dataset writes them, read in place through a per-shard index of member offsets.

A shard is an uncompressed tar holding `<key>.jpg|.jpeg|.png|.webp` (image), `<key>.txt` (caption) and
optionally `<key>.json` per sample. data.path is a directory (its `*.tar` files, sorted) or a brace pattern
such as `data/{00000..00127}.tar`. The first read of a shard scans its tar headers once and stores the
offsets in `<shard>.index` beside it (or under data.index_dir), stamped with the shard's size and mtime;
later runs load the index and read members with one pread each, so samples are random-access and the
pipeline's (dataset, seed, epoch) order, equivalence across world sizes and exact resume hold unchanged.
Samples without an image or caption, and undecodable images, go through the pipeline's skip-and-replace.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

from clip.data.base import CaptionSource, DatasetConfig, UnreadableImage, decode_image
from launcher.errors import UserError
from launcher.safe_write import write_json

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
INDEX_SUFFIX = ".index"
INDEX_VERSION = 1
_BRACE = re.compile(r"\{([^{}]*)\}")


# ---------------------------------------------------------------- shard names (pure)

def expand_braces(pattern: str) -> list[str]:
    """`a/{000..002}.tar` -> a/000.tar, a/001.tar, a/002.tar (zero padding kept); `{x,y}` lists; several
    braces multiply. A pattern without braces is returned as is."""
    parts = _BRACE.split(pattern)  # literal, brace body, literal, ...
    choices = []
    for k, part in enumerate(parts):
        if k % 2 == 0:
            choices.append([part])
            continue
        m = re.fullmatch(r"(\d+)\.\.(\d+)", part)
        if m:
            lo, hi = m.group(1), m.group(2)
            if int(hi) < int(lo):
                raise UserError(f"data.path: brace range {{{part}}} in {pattern!r} runs backwards")
            width = len(lo) if lo.startswith("0") else 0
            choices.append([str(n).zfill(width) for n in range(int(lo), int(hi) + 1)])
        elif "," in part:
            choices.append(part.split(","))
        else:
            raise UserError(f"data.path: brace {{{part}}} in {pattern!r} is neither a range {{000..127}} nor a "
                            f"list {{a,b}}")
    return ["".join(c) for c in itertools.product(*choices)]


def shard_paths(path: Optional[str]) -> list[str]:
    """The shard files data.path names: a directory's *.tar (sorted) or a brace pattern's existing files.
    Missing pattern members are skipped with a warning naming them; nothing at all is a UserError."""
    if not path:
        raise UserError("data.path: not set (expected a directory of .tar shards or a pattern like "
                        "data/{00000..00127}.tar)")
    if os.path.isdir(path):
        shards = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".tar"))
        if not shards:
            raise UserError(f"data.path: directory {path!r} holds no .tar shards")
        return shards
    names = expand_braces(path)
    shards = [p for p in names if os.path.isfile(p)]
    if not shards:
        raise UserError(f"data.path: {path!r} matches no shard file" +
                        (f" ({len(names)} names, {names[0]!r} ... {names[-1]!r})" if len(names) > 1 else ""))
    missing = [p for p in names if not os.path.isfile(p)]
    if missing:
        log.warning("webdataset: %d shard(s) of %s missing, skipped: %s", len(missing), path,
                    ", ".join(os.path.basename(p) for p in missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return shards


def split_member(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, extension): WebDataset's rule, the extension starts at the first dot
    of the base name (`dir/000012.jpg` -> `dir/000012`, `jpg`)."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(folder, stem) if folder else stem, ext.lower()


# ---------------------------------------------------------------- the index (I/O at the edges)

def scan_tar(path: str) -> tuple[list[list], bool]:
    """[[member name, data offset, size], ...] of a tar's regular files and whether it ended early
    (truncated: members whose data runs past the end of the file are left out)."""
    size = os.path.getsize(path)
    members, truncated = [], False
    with open(path, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except tarfile.ReadError as exc:
            raise UserError(f"{path}: not an uncompressed tar file ({exc}); WebDataset shards must be plain "
                            f".tar as img2dataset writes them") from None
        try:
            for m in tar:
                if m.isfile():
                    if m.offset_data + m.size > size:
                        truncated = True
                        break
                    members.append([m.name, m.offset_data, m.size])
        except (tarfile.ReadError, EOFError):
            truncated = True
    return members, truncated


def index_path(shard: str, index_dir: Optional[str]) -> str:
    """Where a shard's index lives: beside it, or under index_dir named by a hash of the shard's path."""
    if index_dir is None:
        return shard + INDEX_SUFFIX
    digest = hashlib.sha1(os.path.abspath(shard).encode()).hexdigest()[:16]
    return os.path.join(index_dir, f"{digest}-{os.path.basename(shard)}{INDEX_SUFFIX}")


def _stamp(shard: str) -> dict:
    st = os.stat(shard)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


_PENDING: dict[str, dict] = {}  # index path -> index built by this process, not yet written


def build_index(shard: str, target: str) -> dict:
    """Scan the shard; the index is written by write_pending_indexes(), once every input has been checked, so
    that a command refused later (data.eval, an earlier run in output_dir) leaves no file behind."""
    members, truncated = scan_tar(shard)
    index = {"version": INDEX_VERSION, "shard": os.path.basename(shard), **_stamp(shard),
             "truncated": truncated, "members": members}
    _PENDING[target] = index
    return index


def write_pending_indexes() -> None:
    """Write the indexes built so far (the caller's last check has passed)."""
    while _PENDING:
        target, index = _PENDING.popitem()
        write_json(target, index, indent=None)  # atomic: ranks building the same index at once each replace it whole


def load_index(shard: str, index_dir: Optional[str]) -> dict:
    """The shard's index, built on first use; an index whose size/mtime stamp differs from the shard is a
    UserError (the shard changed: delete the index to rebuild it)."""
    target = index_path(shard, index_dir)
    if target in _PENDING and _PENDING[target]["size"] == os.path.getsize(shard):
        return _PENDING[target]
    if not os.path.exists(target):
        if index_dir is None and not os.access(os.path.dirname(os.path.abspath(shard)), os.W_OK):
            raise UserError(f"{shard}: cannot write its index beside it (read-only directory); "
                            f"set data.train.index_dir to a writable cache directory")
        return build_index(shard, target)
    try:
        with open(target, encoding="utf-8") as f:
            index = json.load(f)
        stored = {"size": index["size"], "mtime_ns": index["mtime_ns"]}
        members = index["members"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{target}: not a readable shard index ({type(exc).__name__}: {exc}); "
                        f"delete it to rebuild it") from None
    actual = _stamp(shard)
    if stored != actual or index.get("version") != INDEX_VERSION or not isinstance(members, list):
        raise UserError(f"{target}: index does not match its shard {shard} (index: size {stored['size']}, "
                        f"mtime_ns {stored['mtime_ns']}; shard: size {actual['size']}, mtime_ns "
                        f"{actual['mtime_ns']}); delete the index to rebuild it")
    return index


def group_samples(members: list[list]) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Members -> samples in first-seen key order: (key, {extension: (offset, size)})."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    for name, offset, size in members:
        key, ext = split_member(name)
        samples.setdefault(key, {})[ext] = (int(offset), int(size))
    return list(samples.items())


# ---------------------------------------------------------------- the source

@dataclass
class _Columns:
    shard: np.ndarray      # int32 shard number per sample
    image: np.ndarray      # int64 [N, 2] offset, size; size -1 = no image member
    caption: np.ndarray    # int64 [N, 2] offset, size; size -1 = no caption member


class WebDatasetSource(CaptionSource):
    """Samples of all shards, shard by shard in tar order; members are read with pread, nothing unpacked."""

    def __init__(self, shards: list[str], keys: list[str], columns: _Columns):
        self.shards = shards
        self.keys = keys
        self.columns = columns
        self._fds: dict[int, int] = {}

    def __getstate__(self):  # file descriptors stay in the process that opened them
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def __len__(self) -> int:
        return len(self.keys)

    def name(self, i: int) -> str:
        return f"{os.path.basename(self.shards[self.columns.shard[i]])}:{self.keys[i]}"

    def _read(self, i: int, where: np.ndarray) -> bytes:
        shard = int(self.columns.shard[i])
        if shard not in self._fds:
            self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        offset, size = (int(v) for v in where[i])
        data = os.pread(self._fds[shard], size, offset)
        if len(data) != size:
            raise UnreadableImage(self.name(i), "shard is shorter than its index says (truncated?)")
        return data

    def _caption(self, i: int) -> Optional[str]:
        if self.columns.caption[i, 1] < 0:
            return None
        return self._read(i, self.columns.caption).decode("utf-8", errors="replace").strip() or None

    def captions(self, i: int) -> list[str]:
        caption = self._caption(i)
        return [caption] if caption else []

    def encoded_image(self, i: int) -> bytes:
        if self.columns.image[i, 1] < 0:
            raise UnreadableImage(self.name(i), f"no image member ({', '.join('.' + e for e in IMAGE_EXTS)})")
        return self._read(i, self.columns.image)

    def image(self, i: int):
        if self._caption(i) is None:
            raise UnreadableImage(self.name(i), "no caption (.txt missing or empty)")
        return decode_image(self.encoded_image(i), self.name(i))


def open_shards(shards: list[str], index_dir: Optional[str]) -> WebDatasetSource:
    keys: list[str] = []
    shard_of: list[int] = []
    image: list[tuple[int, int]] = []
    caption: list[tuple[int, int]] = []
    for s, shard in enumerate(shards):
        index = load_index(shard, index_dir)
        if index.get("truncated"):
            log.warning("webdataset: shard %s is truncated; its samples after the cut are missing", shard)
        samples = group_samples(index["members"])
        if not samples:
            log.warning("webdataset: shard %s holds no samples, skipped", shard)
        for key, exts in samples:
            keys.append(key)
            shard_of.append(s)
            image.append(next((exts[e] for e in IMAGE_EXTS if e in exts), (0, -1)))
            caption.append(exts.get(CAPTION_EXT, (0, -1)))
    if not keys:
        raise UserError(f"webdataset: the {len(shards)} shard(s) hold no samples (first: {shards[0]!r})")
    columns = _Columns(np.asarray(shard_of, np.int32), np.asarray(image, np.int64).reshape(-1, 2),
                       np.asarray(caption, np.int64).reshape(-1, 2))
    return WebDatasetSource(shards, keys, columns)


def load(cfg: DatasetConfig) -> WebDatasetSource:
    """Training source: data.path (a shard directory or brace pattern), indexes under data.index_dir if set."""
    return open_shards(shard_paths(cfg.path), cfg.index_dir)
