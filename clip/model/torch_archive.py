"""Read PyTorch checkpoint files without torch, and without letting the pickle inside run code.

PyTorch files are pickles whose tensors point at raw storage records. A normal unpickler imports and
calls whatever the file names, so a downloaded checkpoint could run arbitrary code. `RestrictedUnpickler`
resolves only the handful of names a checkpoint needs (tensor rebuild calls, storage types, OrderedDict,
TorchScript list builders); TorchScript module classes (`__torch__.*`) become inert attribute holders.
Anything else raises `UnsafeArchiveError` before it is called.

Supported containers: the zip format of `torch.save` (PyTorch >= 1.6) and of `torch.jit.save`
(OpenAI's `.pt` files), and the legacy non-zip `torch.save` format (a few lines more, same unpickler).
"""
from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np

from launcher.errors import UserError

_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("float64"),
    "FloatStorage": np.dtype("float32"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": np.dtype("uint16"),  # widened to float32 on read: numpy has no bfloat16
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_MAGIC = b"PK\x03\x04"
# The largest tensor of the largest preset (token embedding 49408 x 768, ~38M elements) with room for custom
# models 16x that size; a file claiming more is refused before anything is allocated.
MAX_ELEMENTS = 1 << 30
MAX_PICKLE_BYTES = 256 << 20  # the pickle only names tensors (OpenAI's ViT-L/14: ~100 KB)


class UnsafeArchiveError(UserError):
    """The pickle asked for something other than tensor data: refused before anything ran."""


class ArchiveError(UserError):
    """The file is not a readable PyTorch archive (truncated, corrupt or another format)."""


class _Sealed:
    """The reader's own records: a pickle BUILD instruction may not overwrite their fields."""

    def __setstate__(self, state):
        raise UnsafeArchiveError("the pickle tries to overwrite the reader's tensor records")


@dataclass(frozen=True)
class StorageType(_Sealed):
    """Stands in for `torch.<X>Storage`; only its element type matters."""
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class StorageRef(_Sealed):
    """A persistent id from the pickle: which record holds the bytes, of what type, how many elements."""
    key: str
    storage_type: StorageType
    numel: int


@dataclass(frozen=True)
class TensorRef(_Sealed):
    """A tensor as the pickle describes it; materialised only after the pickle has been read."""
    storage: StorageRef
    offset: int
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]


class _OrderedDict(dict):
    """`collections.OrderedDict` stand-in that also accepts pickled attributes such as `_metadata`."""


class ScriptObject:
    """Inert stand-in for a TorchScript class (`__torch__.*`): keeps its pickled state as attributes."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """`torch._utils._rebuild_tensor_v2` / `_rebuild_tensor`: keep the view description only."""
    if not isinstance(storage, StorageRef):
        raise UnsafeArchiveError("tensor record without storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise ArchiveError("tensor record with a non-sequence size or stride")
    return TensorRef(storage, _index(storage_offset), tuple(_index(s) for s in size),
                     tuple(_index(s) for s in stride))


def _index(value) -> int:
    """An integer field of a tensor record (size, stride, offset), refused when absurd."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 62) < value < (1 << 62):
        raise ArchiveError(f"tensor record with a bad size, stride or offset {value!r:.40}")
    return value


def _rebuild_parameter(data, *_ignored):
    """`torch._utils._rebuild_parameter`: a Parameter is its data."""
    return data


def _build_list(items):
    """`torch.jit._pickle.build_*list`: TorchScript's typed lists are plain lists here."""
    return list(items)


def _restore_type_tag(value, _type_str):
    """`torch.jit._pickle.restore_type_tag`: the type annotation is irrelevant for reading weights."""
    return value


_ALLOWED: Dict[Tuple[str, str], object] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "build_intlist"): _build_list,
    ("torch.jit._pickle", "build_doublelist"): _build_list,
    ("torch.jit._pickle", "build_boollist"): _build_list,
    ("torch.jit._pickle", "build_tensorlist"): _build_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
}
_ALLOWED.update({("torch", name): StorageType(name) for name in _STORAGE_DTYPES})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted names; every other global is refused."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            return ScriptObject
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeArchiveError(
                f"{self.source}: refusing to load '{module}.{name}' from the pickle; "
                f"only tensor data is allowed") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise UnsafeArchiveError(f"{self.source}: unexpected persistent id {pid!r:.80}")
        if len(pid) > 5 and pid[5] is not None:
            raise ArchiveError(f"{self.source}: legacy storage views are not supported")
        numel = _index(pid[4])
        if not 0 <= numel <= MAX_ELEMENTS:
            raise ArchiveError(f"{self.source}: a storage claims {numel} elements (limit {MAX_ELEMENTS})")
        return StorageRef(str(pid[2]), pid[1], numel)


def unpickle(file, source: str):
    """Read one pickle from a binary file object with the restricted unpickler; tensors become `TensorRef`."""
    try:
        return RestrictedUnpickler(file, source).load()
    except UserError:
        raise
    except RecursionError:
        raise ArchiveError(f"{source}: the pickle is nested too deeply") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, MemoryError, OverflowError) as exc:
        raise ArchiveError(f"{source}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None


def flatten(obj, prefix: str = "") -> Dict[str, TensorRef]:
    """Dotted name -> tensor for every tensor reachable through dicts, lists and TorchScript objects."""
    out: Dict[str, TensorRef] = {}
    stack = [(prefix, obj)]
    seen = set()
    while stack:
        name, value = stack.pop()
        if isinstance(value, TensorRef):
            out[name] = value
            continue
        if isinstance(value, ScriptObject):
            value = value.state
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, child in items:
                stack.append((f"{name}.{key}" if name else str(key), child))
    return out


def materialize(ref: TensorRef, storage: np.ndarray, source: str, name: str) -> np.ndarray:
    """Copy the strided view a tensor describes out of its storage, with bounds checked first."""
    if len(ref.shape) != len(ref.stride) or any(s < 0 for s in ref.shape + ref.stride) or ref.offset < 0:
        raise ArchiveError(f"{source}: tensor '{name}' has an invalid shape/stride")
    numel = math.prod(ref.shape)
    if numel > MAX_ELEMENTS:
        raise ArchiveError(f"{source}: tensor '{name}' claims {numel} elements (limit {MAX_ELEMENTS})")
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype=storage.dtype)
    if numel > storage.size:
        raise ArchiveError(f"{source}: tensor '{name}' has {numel} elements but its storage holds {storage.size}")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= storage.size:
        raise ArchiveError(f"{source}: tensor '{name}' reaches past its storage (file truncated?)")
    if ref.offset == 0 and ref.stride == _contiguous_strides(ref.shape) and last == storage.size - 1:
        return storage.reshape(ref.shape)  # the common case: the whole storage, no copy
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[ref.offset:], shape=ref.shape,
                                           strides=tuple(s * item for s in ref.stride), writeable=False)
    return np.array(view)


def _contiguous_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _storage_array(raw: bytes, ref: StorageRef, big_endian: bool, source: str) -> np.ndarray:
    if not isinstance(ref.storage_type, StorageType) or ref.storage_type.name not in _STORAGE_DTYPES:
        raise ArchiveError(f"{source}: storage '{ref.key}' has an unknown type")
    dtype = ref.storage_type.dtype
    if len(raw) < ref.numel * dtype.itemsize:
        raise ArchiveError(f"{source}: storage '{ref.key}' holds {len(raw)} bytes, expected "
                           f"{ref.numel * dtype.itemsize} (file truncated?)")
    array = np.frombuffer(raw, dtype=dtype.newbyteorder(">" if big_endian else "<"), count=ref.numel)
    if ref.storage_type.name == "BFloat16Storage":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _resolve(refs: Dict[str, TensorRef], read_storage: Callable[[StorageRef], np.ndarray],
             source: str) -> Dict[str, np.ndarray]:
    cache: Dict[str, np.ndarray] = {}
    out = {}
    for name, ref in sorted(refs.items()):
        if ref.storage.key not in cache:
            cache[ref.storage.key] = read_storage(ref.storage)
        out[name] = materialize(ref, cache[ref.storage.key], source, name)
    return out


def _read_zip(path: str) -> Dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if not pickles:
            raise ArchiveError(f"{path}: zip file without a data.pkl record: not a PyTorch archive")
        if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
            raise ArchiveError(f"{path}: data.pkl holds {archive.getinfo(pickles[0]).file_size} bytes "
                               f"(limit {MAX_PICKLE_BYTES}); not a checkpoint's tensor index")
        root = pickles[0][: -len("data.pkl")]
        big_endian = (root + "byteorder" in names
                      and archive.read(root + "byteorder").strip() == b"big")
        refs = flatten(unpickle(io.BytesIO(archive.read(pickles[0])), path))

        def read_storage(ref: StorageRef) -> np.ndarray:
            record = f"{root}data/{ref.key}"
            if record not in names:
                raise ArchiveError(f"{path}: missing tensor record '{record}' (file truncated?)")
            needed = ref.numel * ref.storage_type.dtype.itemsize
            if archive.getinfo(record).file_size > needed + 4096:  # no decompressing far more than is used
                raise ArchiveError(f"{path}: tensor record '{record}' holds {archive.getinfo(record).file_size} "
                                   f"bytes, its tensors use {needed}")
            return _storage_array(archive.read(record), ref, big_endian, path)

        return _resolve(refs, read_storage, path)


def _read_legacy(path: str) -> Dict[str, np.ndarray]:
    """Pre-1.6 `torch.save`: magic, protocol, sys info, the object, storage keys, then raw storages."""
    with open(path, "rb") as f:
        if unpickle(f, path) != _LEGACY_MAGIC:
            raise ArchiveError(f"{path}: not a PyTorch file (bad magic number)")
        for _ in range(2):  # protocol version, system info
            unpickle(f, path)
        refs = flatten(unpickle(f, path))
        keys = unpickle(f, path)
        types = {r.storage.key: r.storage for r in refs.values()}
        storages: Dict[str, np.ndarray] = {}
        for key in keys:
            count_raw = f.read(8)
            if len(count_raw) != 8:
                raise ArchiveError(f"{path}: storage '{key}' missing (file truncated?)")
            numel = struct.unpack("<q", count_raw)[0]
            if not 0 <= numel <= MAX_ELEMENTS:
                raise ArchiveError(f"{path}: storage '{key}' claims {numel} elements (limit {MAX_ELEMENTS})")
            ref = types.get(str(key))
            if ref is None:
                raise ArchiveError(f"{path}: storage '{key}' is not referenced by any tensor")
            storages[ref.key] = _storage_array(f.read(numel * ref.storage_type.dtype.itemsize),
                                               StorageRef(ref.key, ref.storage_type, numel), False, path)

    def read_storage(ref: StorageRef) -> np.ndarray:
        if ref.key not in storages:
            raise ArchiveError(f"{path}: storage '{ref.key}' missing (file truncated?)")
        return storages[ref.key]

    return _resolve(refs, read_storage, path)


def load(path: str) -> Dict[str, np.ndarray]:
    """Every tensor in a PyTorch file as dotted name -> numpy array (nested dicts and modules flattened).

    A TorchScript archive yields its module attributes (`visual.conv1.weight`, ...); a wrapped state dict
    yields e.g. `state_dict.visual.conv1.weight`. Raises `UserError` subclasses on any problem.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if head == ZIP_MAGIC:
            return _read_zip(path)
        if head[:1] == b"\x80":
            return _read_legacy(path)
    except UserError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, pickle.UnpicklingError, struct.error,
            ValueError) as exc:
        raise ArchiveError(f"{path}: damaged or truncated PyTorch archive ({exc})") from None
    raise ArchiveError(f"{path}: not a PyTorch archive (no zip or pickle header)")
