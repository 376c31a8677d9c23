"""Image-caption tables in open_clip's format: a CSV or TSV file with a header row naming an image-path
column (default `filepath`) and a caption column (default `title`).

Relative image paths are resolved against the table's own directory, so a dataset folder can move.
Rows naming the same image are merged into one sample with several captions.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Optional

from clip.data.base import CaptionSource, DatasetConfig, load_image_file, read_file_bytes
from launcher.errors import UserError


def separator_for(path: str, configured: Optional[str]) -> str:
    """The configured separator, else tab for .tsv files and comma for everything else."""
    if configured:
        return configured
    return "\t" if path.lower().endswith(".tsv") else ","


def parse_table(text: str, where: str, sep: str, image_key: str, caption_key: str
                ) -> tuple[list[str], dict[str, list[str]]]:
    """Rows -> (image paths in first-seen order, image path -> captions); errors name file, line and column."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        return _parse_rows(reader, where, sep, image_key, caption_key)
    except csv.Error as exc:  # e.g. a field beyond csv's size limit, a stray NUL byte
        raise UserError(f"{where} line {reader.line_num}: not a readable table ({exc})") from None


def _parse_rows(reader, where: str, sep: str, image_key: str, caption_key: str):
    header = next(reader, None)
    if header is None:
        raise UserError(f"{where}: file is empty (expected a header row with columns {image_key!r} and {caption_key!r})")
    header = [h.strip() for h in header]
    for key, option in ((image_key, "csv_image_key"), (caption_key, "csv_caption_key")):
        if key not in header:
            raise UserError(f"{where}: header has no column {key!r} (data.{option}); columns are {header} "
                            f"with separator {sep!r}")
    ii, ci = header.index(image_key), header.index(caption_key)
    order: list[str] = []
    captions: dict[str, list[str]] = {}
    for row in reader:
        lineno = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ii, ci):
            raise UserError(f"{where} line {lineno}: expected {len(header)} columns separated by {sep!r}, got {len(row)}")
        image, caption = row[ii].strip(), row[ci].strip()
        if not image or not caption:
            column = image_key if not image else caption_key
            raise UserError(f"{where} line {lineno}: column {column!r} is empty")
        if image not in captions:
            order.append(image)
            captions[image] = []
        captions[image].append(caption)
    if not order:
        raise UserError(f"{where}: no rows after the header (expected one image path and caption per row)")
    return order, captions


class CsvCaptions(CaptionSource):
    """Image-caption pairs listed in a CSV/TSV table."""

    def __init__(self, base_dir: str, images: list[str], captions: dict[str, list[str]]):
        self.base_dir = base_dir
        self.images = images
        self._captions = captions

    def __len__(self) -> int:
        return len(self.images)

    def captions(self, i: int) -> list[str]:
        return self._captions[self.images[i]]

    def image(self, i: int):
        return load_image_file(os.path.join(self.base_dir, self.images[i]))

    def encoded_image(self, i: int) -> bytes:
        return read_file_bytes(os.path.join(self.base_dir, self.images[i]))

    def name(self, i: int) -> str:
        return self.images[i]


def load(cfg: DatasetConfig) -> CsvCaptions:
    """Read the table at cfg.path (a file, not a directory)."""
    path = cfg.path
    if not path or not os.path.isfile(path):
        raise UserError(f"data.path: caption table {path!r} does not exist (expected a .csv or .tsv file)")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    sep = separator_for(path, cfg.csv_separator)
    try:
        images, captions = parse_table(text, path, sep, cfg.csv_image_key, cfg.csv_caption_key)
    except csv.Error as exc:
        raise UserError(f"{path}: not a valid {'TSV' if sep == chr(9) else 'CSV'} file ({exc})") from None
    return CsvCaptions(os.path.dirname(os.path.abspath(path)), images, captions)
