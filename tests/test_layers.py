"""The import structure, read from the source (ast): the launcher never needs MindSpore or clip/; clip/ uses
only the launcher's pure worker-side modules; only clip.profiles knows that clip.native (the CPU-only
implementations) exists; and no lower layer imports a higher one, at the top of a file or inside a function.

A module not named in LAYERS falls into the first layer whose glob matches it; name it in its layer to be
stricter. docs/ARCHITECTURE.md draws the same table."""
import ast
import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("launcher", "clip")

# Lowest first. A module may import modules of its own layer or lower ones, never a higher one.
LAYERS = [
    # launcher: the worker side of the contract (pure, importable by any worker), parsers and pure logic,
    # then processes and machines, then the commands
    ["launcher", "launcher.errors", "launcher.safe_write", "launcher.worker", "launcher.backends",
     "launcher.backends.*"],
    ["launcher.hccn", "launcher.cluster", "launcher.plan", "launcher.diagnosis"],
    ["launcher.ranktable", "launcher.supervisor"],
    ["launcher.*", "launcher.mpi", "launcher.doctor", "launcher.run", "launcher.msrun"],
    ["launcher.cli", "launcher.__main__"],
    # clip: pure foundations and the CPU-only implementations, the one switch between those and MindSpore's
    # stock pieces, then model, parallel, loss, evaluation, training, and the front doors
    ["clip", "clip.schema", "clip.config", "clip.model", "clip.model.architectures", "clip.model.tokenizer",
     "clip.model.hf_tokenizer", "clip.model.transforms", "clip.model.torch_archive", "clip.model.weights",
     "clip.loss.modes", "clip.data", "clip.data.*", "clip.native", "clip.native.*"],
    ["clip.profiles"],
    ["clip.model.*"],
    ["clip.parallel", "clip.parallel.*"],
    ["clip.loss", "clip.loss.*"],
    ["clip.eval", "clip.eval.encode", "clip.eval.zeroshot", "clip.eval.retrieval", "clip.eval.predict",
     "clip.eval.linear_probe", "clip.eval.results"],
    ["clip.train", "clip.train.*"],
    ["clip.api", "clip.api.app"],
    ["clip.*", "clip.api.trainer", "clip.eval.cli", "clip.eval.__main__", "clip.train.__main__", "clip.__main__",
     "clip.convert", "clip.predict"],
]

# Imports never allowed, whatever the layers say: (importing package, imported top-level name).
FORBIDDEN = {("launcher", "mindspore"), ("launcher", "clip")}
# The launcher modules a clip module may import: the worker side of the contract, pure Python.
WORKER_SIDE = ("launcher", "launcher.errors", "launcher.safe_write", "launcher.worker", "launcher.backends",
               "launcher.backends.*")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules():
    return sorted(module_name(p) for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def imports_of(module: str):
    """Absolute names a module imports anywhere in it (functions too): `from a import b` gives a.b when
    a.b is one of ours, else a."""
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / module.replace(".", "/") / "__init__.py"
    ours = set(all_modules())
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import; the project uses absolute imports"
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in ours else node.module)
    return names


def lazy_exports_of(module: str) -> set:
    """Modules a package's lazy `_EXPORTS` table names (imported on first use, so they count as imports)."""
    path = REPO / module.replace(".", "/") / "__init__.py"
    if not path.exists():
        return set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return {value.value for value in node.value.values}
    return set()


def layer_of(module: str) -> int:
    """The layer naming the module exactly, else the first one whose glob matches it."""
    exact = [i for i, layer in enumerate(LAYERS) if module in layer]
    globbed = [i for i, layer in enumerate(LAYERS) for pattern in layer if fnmatch.fnmatchcase(module, pattern)]
    assert exact or globbed, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return (exact or globbed)[0]


def matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@pytest.mark.parametrize("module", all_modules())
def test_no_forbidden_and_no_upward_imports(module):
    mine = layer_of(module)
    top = module.split(".")[0]
    for name in sorted(imports_of(module)):
        assert (top, name.split(".")[0]) not in FORBIDDEN, f"{module} imports {name}"
        if top == "clip" and name.split(".")[0] == "launcher":
            assert matches(name, WORKER_SIDE), f"{module} imports {name}: clip may use only {WORKER_SIDE}"
        if name.startswith("clip.native") and not module.startswith("clip.native"):
            assert module == "clip.profiles", (f"{module} imports {name}: only clip.profiles chooses the CPU-only "
                                               f"implementations")
        if name.split(".")[0] in PACKAGES and top == name.split(".")[0]:
            assert layer_of(name) <= mine, (f"{module} (layer {mine}) imports {name} (layer {layer_of(name)}): "
                                            f"a lower layer may not import a higher one")


@pytest.mark.parametrize("package", [m for m in all_modules() if lazy_exports_of(m)])
def test_lazy_exports_name_real_modules_of_allowed_layers(package):
    """A package's lazy export table is an import too: each module exists, and a package that is a
    foundation (clip.model) may export from its own higher layer only because nothing loads it eagerly."""
    for target in lazy_exports_of(package):
        assert target in set(all_modules()), f"{package}: _EXPORTS names {target}, which does not exist"
        assert not target.startswith("clip.native"), f"{package} exports from {target}"


def test_the_check_sees_imports():
    """The reader finds what is there, so a passing layer test means something."""
    assert "launcher.errors" in imports_of("launcher.run")
    assert "mindspore" in imports_of("clip.parallel.distributed")
    assert "launcher.backends.dynamic" in imports_of("launcher.plan")
    assert "clip.model.weights" in imports_of("clip.train.checkpoint")
    assert layer_of("clip.api.app") > layer_of("clip.train.loop") > layer_of("clip.model.factory")
    assert layer_of("clip.model.factory") > layer_of("clip.profiles") > layer_of("clip.native.kernels")
    assert layer_of("clip.model.towers") > layer_of("clip.data.cifar100")
    assert {"clip.profiles", "clip.native.kernels", "clip.native.shm_collectives", "clip.native.buckets",
            "clip.train.step", "clip.parallel.distributed", "launcher.worker"} <= set(all_modules())
