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


def run(module: str, argv: list, ws: Path) -> str:
    """main(argv) in `ws`: exit code 2, one `error:` line (returned), no traceback, nothing written."""
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
    return lines[0]


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
    """SafeDumper plus the Digits representer below, kept off yaml.SafeDumper itself."""


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
        beyond = st.floats(min_value=FLOAT32_MAX * 1.001, max_value=1e308)
        out.append(beyond.flatmap(lambda x: st.sampled_from([x, -x])))
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
            item = typing.get_args(a)[0]
            if item in (int, float):  # items beyond the field's bounds
                out.append(st.lists(st.one_of(_numbers_outside(spec, item is int, ws)), min_size=1, max_size=2))
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


# ---------------------------------------------------------------- every command-line argument of every entry point

REPO = Path(__file__).resolve().parent.parent
LAUNCHER_COMMANDS = ("ranktable", "merge", "validate", "run", "msrun", "doctor")
UNTYPED = {"--set"}  # KEY=VALUE of a config key: its values are the config keys' generated mistakes above


def entry_modules() -> set:
    """The module defining each entry point's main: pyproject's scripts, every __main__.py and every module run
    as `python -m` (an `if __name__ == "__main__"` block), each followed to where its main is defined."""
    import ast
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"].values()
    found = {target.partition(":")[0] for target in scripts}
    for package in ("clip", "launcher"):
        for file in (REPO / package).rglob("*.py"):
            source = file.read_text()
            if file.name == "__main__.py" or '__name__ == "__main__"' in source:
                found.add(".".join(file.relative_to(REPO).with_suffix("").parts))
    resolved = set()
    for module in found:
        file = REPO / (module.replace(".", "/") + ".py")
        tree = ast.parse(file.read_text())
        origin = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  and any(a.name == "main" for a in n.names)]
        resolved.add(origin[0] if origin and not any(isinstance(n, ast.FunctionDef) and n.name == "main"
                                                     for n in tree.body) else module)
    return resolved


def parsers():
    """(entry point label, module with main, argv prefix, parser) for every parser a user reaches."""
    out = []
    for module in sorted(entry_modules()):
        mod = importlib.import_module(module)
        if module == "launcher.cli":
            for command in LAUNCHER_COMMANDS:
                top = mod.build_parser(command)
                sub = next(a for a in top._actions if a.choices and command in a.choices).choices[command]
                out.append((f"launcher {command}", module, [command], sub))
        else:
            out.append((module, module, [], mod.build_parser()))
    return out


def arguments(typed_only: bool):
    """(label, module, argv prefix, the positionals before it, action) of every argument that takes a value
    (`typed_only`: that declares a kind or choices, what generation can read)."""
    import argparse

    from launcher.errors import ArgKind

    out = []
    for label, module, prefix, parser in parsers():
        before = []
        for action in parser._actions:
            if action.nargs == 0 or action.nargs == argparse.REMAINDER or isinstance(action, argparse._HelpAction):
                continue
            if not typed_only or isinstance(action.type, ArgKind) or action.choices is not None:
                out.append((label, module, prefix, list(before), action))
            if not action.option_strings:
                before.append(action)
    return out


ARGUMENTS = arguments(typed_only=True)


def _name(action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--")]
    return (longs or action.option_strings or [action.dest])[0]


def test_every_argument_declares_its_kind():
    """A new argument is covered by declaring it: a kind (launcher.errors) or choices, or generation misses it."""
    from launcher.errors import ArgKind

    everything = arguments(typed_only=False)
    assert len({label for label, *_ in everything}) >= 14
    bare = [f"{label} {_name(a)}" for label, _, _, _, a in everything
            if not isinstance(a.type, ArgKind) and a.choices is None and _name(a) not in UNTYPED]
    assert not bare, f"arguments without a kind (type=launcher.errors.integer/number/text/path(...)): {bare}"


PATHS_WRONG = {  # per kind: entries of the workspace it must refuse
    "file": ["a_dir", "a_fifo", "missing", "a_file/x"],
    "dir": ["a_file", "a_fifo", "missing"],
    "path": ["a_fifo", "missing", "a_file/x"],
    "maybe_file": ["a_dir", "a_fifo"],
    "input": ["a_fifo"],
    "output_file": ["a_dir", "a_fifo", "missing/x.out", "a_file/x.out"],
    "output_dir": ["a_file", "a_fifo", "a_file/sub"],
}
NOT_INTEGERS = ["", "3.5", "1e3", "0x10", " 3", "3\n", "\u0663", "\uff13", "nan", "+", "9" * 40]
NOT_NUMBERS = ["", "abc", "nan", "inf", "-inf", "1e999", "0x1p3", "1,5", "\u0663", "1 "]


def wrong_argument_values(action, ws: Path):
    from launcher.errors import INT32_MAX, ArgKind

    kind = action.type if isinstance(action.type, ArgKind) else None
    out = []
    if action.choices is not None:
        names = {str(c) for c in action.choices}
        out.append(st.text(min_size=1, max_size=8).filter(lambda s: s not in names and not s.startswith("-")))
    if kind is None:
        return st.one_of(out)
    if kind.kind == "boolean":
        out.append(st.text(max_size=6).filter(lambda s: s not in kind.words))
    elif kind.kind in ("integer", "number"):
        out.append(st.sampled_from(NOT_INTEGERS if kind.kind == "integer" else NOT_NUMBERS))
        low = kind.ge if kind.ge is not None else kind.gt
        integers = kind.kind == "integer"
        if low is not None:
            below = (st.integers(min_value=-10**12, max_value=low - 1) if integers else
                     st.floats(min_value=-1e12, max_value=low, exclude_max=kind.ge is not None))
            out.append(below.map(repr))
        high = kind.le if kind.le is not None else (INT32_MAX if integers else None)
        if high is not None:
            above = (st.integers(min_value=high + 1, max_value=10**25) if integers else
                     st.floats(min_value=high, max_value=1e300, exclude_min=True))
            out.append(above.map(repr))
    else:
        out.append(_bad_text())
        if kind.nonempty or kind.kind != "text":
            out.append(st.sampled_from(["", " "] if kind.nonempty else [""]))
        if kind.kind in PATHS_WRONG:
            out.append(st.sampled_from([str(ws / p) for p in PATHS_WRONG[kind.kind]]))
    return st.one_of(out)


def _placeholder(action, ws: Path) -> str:
    """A value an earlier positional accepts, so that parsing reaches the argument under test."""
    from launcher.errors import ArgKind

    if action.choices is not None:
        return str(next(iter(action.choices)))
    kind = action.type.kind if isinstance(action.type, ArgKind) else "text"
    return {"dir": str(ws / "a_dir"), "path": str(ws / "a_file"), "file": str(ws / "a_file"),
            "maybe_file": str(ws / "a_file"), "input": str(ws / "a_file"), "output_dir": str(ws / "new_dir"),
            "output_file": str(ws / "new.out"), "integer": "1", "number": "1"}.get(kind, "x")


@pytest.mark.parametrize("label,module,prefix,before,action", ARGUMENTS,
                         ids=[f"{label}:{_name(a)}" for label, _, _, _, a in ARGUMENTS])
def test_every_argument_refuses_generated_mistakes(label, module, prefix, before, action, ws):
    head = prefix + [_placeholder(b, ws) for b in before]

    @SETTINGS
    @given(value=wrong_argument_values(action, ws))
    def check(value):
        if action.option_strings:
            argv = head + ([f"{_name(action)}={value}"] if _name(action).startswith("--") else [_name(action), value])
        else:
            argv = head + [value]
        run(module, argv, ws)

    check()


# ---------------------------------------------------------------- fields of a pack manifest (data.train: mindrecord)

def _manifest() -> dict:
    from clip.data.mindrecord import FORMAT, VERSION, shard_file

    return {"format": FORMAT, "version": VERSION, "plan": {"type": "csv"}, "samples": 4,
            "shards": [{"file": shard_file(0), "first": 0, "samples": 2, "bytes": 10, "sha256": "0" * 64},
                       {"file": shard_file(1), "first": 2, "samples": 2, "bytes": 10, "sha256": "1" * 64}],
            "unreadable": [[1, "b.jpg"]]}


MANIFEST_FIELDS = {  # where in the manifest -> values `pack` never writes there
    ("samples",): st.one_of(st.integers(max_value=-1), st.just(2**70), st.text(max_size=3), st.just(None)),
    ("shards",): st.one_of(st.just([]), st.integers(), st.dictionaries(st.just("a"), st.integers(), max_size=1)),
    ("shards", 0): st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)),
    ("shards", 1, "file"): st.one_of(st.sampled_from(["../../etc/passwd", "/etc/passwd", "part-00000.mindrecord",
                                                      "part-1.mindrecord", "a\x00b"]), st.integers()),
    ("shards", 0, "first"): st.one_of(st.integers(min_value=1), st.integers(max_value=-1), st.just(True)),
    ("shards", 1, "samples"): st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3)),
    ("shards", 0, "bytes"): st.one_of(st.integers(max_value=-1), st.floats(), st.just(None)),
    ("shards", 1, "sha256"): st.one_of(st.text(max_size=70), st.integers(), st.just("A" * 64)),
    ("unreadable",): st.one_of(st.integers(), st.text(max_size=3), st.dictionaries(st.just("1"), st.just("x"))),
    ("unreadable", 0): st.one_of(st.just([4, "x"]), st.just([-1, "x"]), st.just([0]), st.just([0, 1]),
                                 st.integers(), st.just(["0", "x"])),
}


def _place(manifest: dict, where: tuple, value) -> dict:
    node = manifest
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    return manifest


@pytest.mark.parametrize("where", list(MANIFEST_FIELDS), ids=[".".join(map(str, w)) for w in MANIFEST_FIELDS])
def test_every_manifest_field_refuses_generated_mistakes(where, ws, tmp_path_factory):
    """`python -m clip.train` with data.train a packed directory whose manifest field `where` is wrong: the one
    line names the manifest and that field (checked before any shard is opened or anything written)."""
    import json

    from clip.data.mindrecord import MANIFEST

    root = tmp_path_factory.mktemp("pack")
    pack = root / "pack"
    pack.mkdir()
    config = root / "run.yaml"
    config.write_text(f"data: {{train: {{type: mindrecord, path: '{pack}'}}, eval: null}}\n"
                      f"output_dir: '{ws / 'out'}'\ntrain: {{num_workers: 1}}\n")

    label = where[0] if where[0] == "unreadable" or len(where) == 1 else (
        f"{where[0]}[{where[1]}]" + "".join(f".{p}" for p in where[2:]))

    @SETTINGS
    @given(value=MANIFEST_FIELDS[where])
    def check(value):
        (pack / MANIFEST).write_text(json.dumps(_place(_manifest(), where, value)))
        line = run("clip.train.loop", ["--config", str(config)], ws)
        assert f"{MANIFEST}: not a clip-mindrecord" in line and f"({label}" in line, line

    check()


def test_a_refused_run_leaves_no_shard_index(tmp_path):
    """WebDataset shards are indexed while data.train is checked; when a later check refuses the run (here
    data.eval), no index is written beside the shards."""
    from data_files import write_img2dataset_dir

    write_img2dataset_dir(tmp_path / "shards", num_samples=6, per_shard=3, corrupt=-1, uncaptioned=-1)
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{train: {{type: webdataset, path: '{tmp_path / 'shards'}'}}, "
                      f"eval: {{type: cifar100, path: '{tmp_path / 'no_cifar'}'}}}}\n"
                      f"output_dir: '{tmp_path / 'out'}'\ntrain: {{batch_size: 2, num_workers: 1}}\n")
    line = run("clip.train.loop", ["--config", str(config)], tmp_path)
    assert "data.eval.path" in line and not list((tmp_path / "shards").glob("*.index"))
