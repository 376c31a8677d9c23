"""The one way files are written: a temporary file in the target directory, fsync, rename, fsync of the
directory. Readers never see half a file, a crash leaves the previous file, and on any error the temporary
file is removed and the failure is a one-line UserError naming the path and the reason."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from typing import Callable, Optional, Union

from launcher.errors import UserError

REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a parent is not a directory",
    errno.ENAMETOOLONG: "file name too long",
}


def reason(exc: BaseException) -> str:
    """A short reason for a failed write: the errno's name for OSErrors, else the first line of the message."""
    if isinstance(exc, OSError) and exc.errno in REASONS:
        return REASONS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_target(path: str) -> str:
    """The absolute path if `path` can be a file written here: not a directory, parent not a file."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise UserError(f"cannot write {path}: is a directory")
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"cannot write {path}: {parent} is not a directory")
    return full


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


RANDOM_CHARS = 8  # what tempfile adds between prefix and suffix


def temporary_affixes(directory: str, name: str, ext: str) -> tuple[str, str]:
    """Prefix and suffix of `name`'s temporary file, cut so that the whole name fits the file system's limit
    (NAME_MAX bytes): a valid 255-byte output name must not fail because its temporary name is longer."""
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    suffix = f".tmp{ext}" if len(os.fsencode(ext)) <= 16 else ".tmp"
    room = limit - RANDOM_CHARS - len(os.fsencode(suffix)) - 2
    stem = os.fsencode(name)[:max(room, 0)]
    return f".{os.fsdecode(stem.decode('utf-8', 'ignore').encode('utf-8'))}.", suffix


def write_with(path: str, writer: Callable[[str], None], mode: Optional[int] = 0o644) -> str:
    """Atomically create `path` by calling writer(temporary path) (for libraries that write to a path
    themselves). The temporary name keeps the extension, so format detection and '.ckpt' suffixes work."""
    full = check_target(path)
    directory = os.path.dirname(full)
    ext = os.path.splitext(full)[1]
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        prefix, suffix = temporary_affixes(directory, os.path.basename(full), ext)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
        os.close(fd)
        writer(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, full)
        tmp = None
        fsync_dir(directory)
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:  # MindSpore reports failed writes as RuntimeError
        raise UserError(f"cannot write {path}: {reason(exc)}") from None
    finally:
        if tmp is not None:
            remove_temporaries(tmp, ext)
    return path


def remove_temporaries(tmp: str, ext: str) -> None:
    """Our temporary file and any a library derived from its name (MindSpore writes '<name>.tmp' first)."""
    directory, name = os.path.split(tmp)
    stem = name[:-len(f".tmp{ext}")]
    for entry in os.listdir(directory):
        if entry == name or entry.startswith(stem + "."):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))


def write_bytes(path: str, data: Union[bytes, str], mode: Optional[int] = 0o644) -> str:
    """Atomically write bytes (or UTF-8 text) to `path`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()

    return write_with(path, write, mode)


def write_text(path: str, text: str, mode: Optional[int] = 0o644) -> str:
    return write_bytes(path, text, mode)


def write_json(path: str, data, indent: Optional[int] = 1) -> str:
    """Atomically write `data` as JSON followed by a newline."""
    return write_bytes(path, json.dumps(data, indent=indent) + "\n")


def link_atomic(source: str, path: str) -> str:
    """Make `path` another name of `source` (a hard link, or a copy where links are not supported),
    replacing it atomically."""
    import shutil

    full = check_target(path)
    directory = os.path.dirname(full)
    tmp = os.path.join(directory, f".{os.path.basename(full)}.{os.getpid()}.tmp{os.path.splitext(full)[1]}")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise
            shutil.copyfile(source, tmp)
        os.replace(tmp, full)
        tmp = None
        fsync_dir(directory)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {reason(exc)}") from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def leftover_temporaries(directory: str) -> list:
    """The temporary files writes in `directory` left when their process was killed between creating and
    renaming them (SIGKILL, power loss): every temporary name above is hidden and contains '.tmp'. Only for a
    directory whose writers are known to be gone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.startswith(".") and ".tmp" in n)
