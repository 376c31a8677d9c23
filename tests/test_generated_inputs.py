"""Bad inputs generated from the schema, not listed: every run-config key and every command-line argument.

For each config key, the field's type and its declared constraints (clip/schema.py) say which values are wrong:
another type, below or above its bounds, huge, NaN and infinities, beyond float32, empty where that is refused,
text with a NUL byte, a control character or invalid UTF-8, a name outside its choices, a path of the wrong kind
(directory for a file, FIFO, a file on the way to an output directory). For each command-line argument, its
`type=` (launcher/errors.py argument kinds) says the same. Every generated mistake goes through the command's
real `main(argv)` in this process and must end with exit code 2, exactly one `error:` line on stderr, no
traceback, nothing on stdout, and no file under the workspace written or changed.

Examples are bounded and reproducible (`derandomize=True`): EXAMPLES per config key, per argument.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import os
import re
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip.config import RunConfig
from clip.schema import FLOAT32_MAX, INT32_MAX, Spec, spec_of

EXAMPLES = 8            # per config key (77 keys today) and per command-line argument
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])

BAD_CHARACTERS = ["\x00", "\x01", "\x1b", "\n", "\r", "\x7f", "\udcff", "\udc80"]  # the last two: invalid UTF-8


# ---------------------------------------------------------------- the workspace (paths of every kind)

@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    (root / "a_file").write_text("not a directory\n")
    (root / "a_dir").mkdir()
    os.mkfifo(root / "a_fifo")
    return root


def digest(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st_ = path.lstat()
            data = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            out[str(path.relative_to(root))] = (st_.st_mode, st_.st_mtime_ns, data)
    return out


def run(module: str, argv: list, ws: Path) -> None:
    """main(argv) in `ws`: exit code 2, one `error:` line, no traceback, nothing written."""
    main = importlib.import_module(module).main
    before = digest(ws)
    err, out = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(cwd)
    text = err.getvalue()
    lines = text.splitlines()
    assert code == 2, (argv, code, text)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, (argv, text)
    assert lines[0].isprintable(), lines[0]
    assert out.getvalue() == "", out.getvalue()
    assert digest(ws) == before, argv


# ---------------------------------------------------------------- wrong values for one config field

def leaves(cls=RunConfig, prefix=""):
    """(dotted key, type, Spec) of every field, sections included (a section given a scalar is a mistake too)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], prefix + f.name
        inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        yield key, tp, spec_of(f)
        if inner:
            yield from leaves(inner[0], key + ".")


KEYS = list(leaves())


class Digits(str):
    """An integer of this many digits, written as YAML digits (Python itself will not print one over 4300)."""

    def __new__(cls, n: int):
        return super().__new__(cls, "9" * n)

    def __repr__(self):
        return f"Digits({len(self)})"


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Digits, lambda dumper, d: dumper.represent_scalar("tag:yaml.org,2002:int", str.__str__(d)))


def _bad_text(base=st.text(max_size=6)):
    return st.tuples(base, st.sampled_from(BAD_CHARACTERS), base).map("".join)


def _numbers_outside(spec: Spec, integer: bool, ws: Path):
    """Numbers beyond the field's bounds, and beyond what the type holds."""
    out = []
    low = spec.ge if spec.ge is not None else spec.gt
    if low is not None:
        if integer:
            out.append(st.integers(max_value=int(low) - (1 if spec.ge is not None else 0), min_value=-10**30))
        else:
            out.append(st.floats(max_value=low, min_value=-1e300, exclude_max=spec.ge is not None))
            if spec.gt == 0:  # positive, but 0 as a float32
                out.append(st.floats(min_value=1e-300, max_value=1e-46))
    high = spec.le if spec.le is not None else spec.lt
    if integer:
        top = int(high) if high is not None else INT32_MAX
        out += [st.integers(min_value=top + 1, max_value=10**40), st.sampled_from([Digits(4000), Digits(5000)])]
        if spec.cores:
            out.append(st.integers(min_value=(os.cpu_count() or 1) + 1, max_value=4096))
        out += [st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())]
    else:
        if high is not None:
            out.append(st.floats(min_value=high, max_value=1e300, exclude_min=spec.le is not None))
        out.append(st.floats(min_value=FLOAT32_MAX * 1.001, max_value=1e308).flatmap(lambda x: st.sampled_from([x, -x])))
        out.append(st.integers(min_value=2**1100, max_value=2**1200))
    out.append(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return out


def wrong_values(tp, spec: Spec, ws: Path):
    """A strategy of values that `tp` + `spec` refuse."""
    args = [a for a in (typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)) if a is not type(None)]
    kinds = set(args)
    out = [st.lists(st.integers(), min_size=1, max_size=3)] if not any(typing.get_origin(a) is list for a in args) \
        else []
    if not any(typing.get_origin(a) is dict or dataclasses.is_dataclass(a) for a in args):
        out.append(st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), min_size=1))
    if any(dataclasses.is_dataclass(a) for a in args):
        return st.one_of(out + [st.integers(), st.text(max_size=5), st.booleans()])
    if bool not in kinds:
        out.append(st.booleans())
    if kinds & {int, float}:
        out.append(st.text(alphabet="abcxyz!?", min_size=1, max_size=6))
        out += _numbers_outside(spec, int in kinds, ws)
    if bool in kinds and not (kinds & {int, float}):
        out.append(st.integers(min_value=2))
        out.append(st.sampled_from(["maybe", "2", "tru"]))
    if str in kinds:
        out += [st.integers(), st.floats(allow_nan=False)]
        out.append(_bad_text())
        if spec.nonempty:
            out.append(st.sampled_from(["", " ", "\t"]))
        if spec.choices is not None:
            choices = spec.choices() if callable(spec.choices) else spec.choices
            out.append(st.text(min_size=1, max_size=8).filter(lambda s: s not in choices))
        if spec.form is not None:
            out.append(st.text(alphabet="abc ", min_size=1, max_size=8).filter(lambda s: not spec.form(s)))
        if spec.path == "maybe_file":
            out.append(st.sampled_from([str(ws / "a_dir"), str(ws / "a_fifo"), str(ws / "a_file" / "x")]))
        elif spec.path == "input":
            out.append(st.just(str(ws / "a_fifo")))
        elif spec.path == "output_dir":
            out.append(st.sampled_from([str(ws / "a_file"), str(ws / "a_file" / "sub"), str(ws / "a_fifo")]))
    for a in args:
        if typing.get_origin(a) is list:
            out.append(st.integers())
            out.append(st.lists(_bad_text(), min_size=1, max_size=2))
            if spec.nonempty:
                out.append(st.just([]))
            if spec.form is not None:
                out.append(st.lists(st.text(alphabet="ab{}0 ", max_size=6).filter(lambda s: not spec.form(s)),
                                    min_size=1, max_size=2))
        if typing.get_origin(a) is dict:
            out.append(st.integers())
            out.append(st.lists(st.integers(), min_size=1, max_size=2))
            out.append(st.dictionaries(st.sampled_from(["a.jpg", "b/c.png"]), _bad_text(), min_size=1))
            if spec.pattern is not None:
                digits = st.text(alphabet="0123456789abcdefg", max_size=70)
                out.append(st.dictionaries(st.sampled_from(["a.jpg"]),
                                           digits.filter(lambda s: not re.fullmatch(spec.pattern, s)), min_size=1))
    return st.one_of(out)


def as_override(key: str, value) -> str:
    """`--set key=VALUE` as a user types it: YAML for values, raw text for argv's undecodable bytes."""
    if isinstance(value, str) and any("\udc80" <= c <= "\udcff" for c in value):
        return f"{key}={value}"
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, allow_unicode=True, width=10**9)
    return f"{key}={text.removesuffix(chr(10)).removesuffix('...').rstrip()}"


def as_file(key: str, value, path: Path) -> None:
    node: dict = {}
    data = node
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    text = yaml.dump(data, Dumper=_Dumper, allow_unicode=True, width=10**9)
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("key,tp,spec", KEYS, ids=[k for k, _, _ in KEYS])
def test_every_config_key_refuses_generated_mistakes(key, tp, spec, ws, tmp_path_factory):
    configs = tmp_path_factory.mktemp("configs")

    @SETTINGS
    @given(value=wrong_values(tp, spec, ws), through_file=st.booleans())
    def check(value, through_file):
        if through_file:
            path = configs / "run.yaml"
            as_file(key, value, path)
            run("clip.config", ["--config", str(path)], ws)
        else:
            run("clip.config", ["--set", as_override(key, value)], ws)

    check()
