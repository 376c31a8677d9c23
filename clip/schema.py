"""Constraints declared beside each config field, and the one walk that checks every field against them.

A key is covered by declaring it: `lr: float = setting(5e-4, gt=0)`. What its type implies is checked for every
field without a declaration, because the libraries underneath enforce it later, after files are written:
integers fit an int32 (MindSpore's shapes, steps and dataset sizes), floats are finite and fit a float32
(MindSpore's parameters and optimiser constants; a bound like `gt=0` is checked on the float32 value too, where
1e-50 is 0), and texts hold no NUL byte (C APIs and paths end there), no control character and no undecodable
byte (argv's invalid UTF-8 arrives as lone surrogates that fail only when config.yaml is written).

Pure Python: `clip.config` and `clip.data.base` (the dataset sections) both declare their fields with it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from launcher.errors import INT32_MAX, PATH_KINDS, path_problem, shown, text_problem

SEED_MAX = 2**32 - 1       # mindspore.set_seed and mindspore.dataset.config.set_seed refuse larger seeds
FLOAT32_MAX = struct.unpack("f", struct.pack("f", 3.4028234663852886e38))[0]


@dataclass(frozen=True)
class Spec:
    """What one field accepts beyond its type. Bounds apply to numbers; `form` and `pattern` to each text (also
    the items of a list or the values of a mapping); `path` to a text naming a file system entry, one of
    launcher.errors.PATH_KINDS (`maybe_file`: if present a readable regular file, existence is the field's own
    check; `input`: if present a readable file or directory, the loader names what it expected; `output_dir`: a
    directory or creatable).
    """

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    le_why: str = ""                           # why the upper bound, for the message
    choices: Union[tuple, Callable[[], tuple], None] = None
    nonempty: bool = False
    pattern: Optional[str] = None              # a text must match fully
    form: Optional[Callable[[str], bool]] = None
    form_what: str = ""                        # what `form` accepts, for the message
    path: Optional[str] = None                 # one of PATH_KINDS
    special: tuple = ()                        # texts that are not paths (train.resume: auto, none)
    cores: bool = False                        # at most this machine's cores (MindSpore's worker bound)
    hint: str = ""                             # appended to a range message, e.g. "(0 = off)"

    def __post_init__(self):
        if self.path is not None and self.path not in PATH_KINDS:
            raise ValueError(f"Spec.path {self.path!r} is not one of {PATH_KINDS}")


SPEC = "clip.schema"  # the metadata key


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **spec) -> Any:
    """A dataclass field with its constraints: `setting(32, ge=1)`, `setting(factory=list, nonempty=True)`."""
    return field(default=default, default_factory=factory, metadata={SPEC: Spec(**spec)})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get(SPEC, Spec())


def check(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every declared and type-implied problem of dataclass `obj` and its sections, as (dotted key, message)."""
    problems = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            problems += check(value, key + ".")
            continue
        optional = type(None) in typing.get_args(hints[f.name])
        problems += [(key + where, message) for where, message in _problems(value, spec_of(f), optional)]
    return problems


def _problems(value: Any, spec: Spec, optional: bool) -> list[tuple[str, str]]:
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        found = [] if value or not spec.nonempty else [("", "must not be empty")]
        for i, item in enumerate(value):
            found += [(f"[{i}]{where}", m) for where, m in _problems(item, spec, False)]
        return found
    if isinstance(value, dict):
        found = []
        for name, item in value.items():
            text = _text_problem(str(name), Spec())
            found += [(f".{shown(name)}", text)] if text else []
            found += [(f".{name}{where}", m) for where, m in _problems(item, spec, False)]
        return found
    if isinstance(value, (int, float)):
        message = _number_problem(value, spec, optional)
    else:
        message = _text_problem(value, spec)
    return [("", message)] if message else []


def _number_problem(value: Union[int, float], spec: Spec, optional: bool) -> Optional[str]:
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if abs(value) > FLOAT32_MAX:
            return f"{shown(value)} overflows float32 (largest {FLOAT32_MAX:.7g})"
        stored = struct.unpack("f", struct.pack("f", value))[0]
    else:
        stored = value
    or_null = " (or null)" if optional else ""
    hint = f" {spec.hint}" if spec.hint else ""
    low_ok = ((spec.ge is None or value >= spec.ge and stored >= spec.ge)
              and (spec.gt is None or value > spec.gt and stored > spec.gt))
    high = spec.le if spec.le is not None else (INT32_MAX if isinstance(value, int) and spec.lt is None else None)
    high_ok = (high is None or value <= high) and (spec.lt is None or value < spec.lt)
    two = (spec.ge is not None or spec.gt is not None) and (spec.le is not None or spec.lt is not None)
    why = f" ({spec.le_why})" if spec.le_why else ""
    interval = (f"{shown(value)} must be in {'[' if spec.ge is not None else '('}"
                f"{_num(spec.ge if spec.ge is not None else spec.gt)}, {_num(high if spec.lt is None else spec.lt)}"
                f"{']' if spec.lt is None else ')'}{why}{or_null}{hint}") if two else ""
    if not low_ok:
        if two and spec.ge is not None:
            return interval
        if spec.gt is not None:
            what = "positive" if spec.gt == 0 else f"greater than {_num(spec.gt)}"
            as_f32 = f" ({value!r} is {stored!r} as a float32)" if stored != value else ""
            return f"{shown(value)} must be {what}{as_f32}{or_null}{hint}"
        if spec.ge == 0:
            return f"{shown(value)} must not be negative{or_null}{hint}"
        return f"{shown(value)} must be at least {_num(spec.ge)}{or_null}{hint}"
    if not high_ok:
        if two:
            return interval
        if spec.lt is not None:
            return f"{shown(value)} must be less than {_num(spec.lt)}{hint}"
        why = spec.le_why or ("the largest int32, what MindSpore's shapes and steps hold" if spec.le is None else "")
        return f"{shown(value)} must be at most {_num(high)}" + (f" ({why})" if why else "") + hint
    if spec.cores:
        cores = os.cpu_count() or 1
        if value > cores:
            return f"{value} is more than this machine's {cores} cores (MindSpore's limit for worker counts)"
    return None


def machine_memory() -> int:
    """Bytes of physical memory: no batch can be larger."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _text_problem(value: str, spec: Spec) -> Optional[str]:
    problem = text_problem(value)
    if problem:
        return problem
    if spec.nonempty and not value.strip():
        return "must not be empty"
    if spec.choices is not None:
        choices = spec.choices() if callable(spec.choices) else spec.choices
        if value not in choices:
            return f"{shown(value)} is not one of {', '.join(choices)}"
    if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
        return f"{shown(value)} is not {spec.form_what or 'of the form ' + spec.pattern}"
    if spec.form is not None and not spec.form(value):
        return f"{shown(value)} is not {spec.form_what}"
    if spec.path is not None and value not in spec.special:
        return path_problem(value, spec.path)
    return None
