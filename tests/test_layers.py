"""The import structure, read from the source (ast): the launcher never needs MindSpore or clip/, clip/
never needs the launcher, both share only common/, and no lower layer imports a higher one.

A module not named in LAYERS falls into the first layer whose glob matches it (a new clip module is a
component, a new launcher module sits with the commands); name it in its layer to be stricter."""
import ast
import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "launcher", "clip")

# Lowest first. A module may import modules of its own layer or lower ones, never a higher one.
LAYERS = [
    ["common", "common.*"],
    # launcher: parsers and pure logic, then processes and machines, then the commands
    ["launcher", "launcher.hccn", "launcher.cluster", "launcher.plan", "launcher.diagnosis"],
    ["launcher.ranktable", "launcher.supervisor"],
    ["launcher.*", "launcher.mpi", "launcher.doctor", "launcher.run", "launcher.msrun"],
    ["launcher.cli", "launcher.__main__"],
    # clip (docs/ARCHITECTURE.md): foundations, components, application, front doors
    ["clip", "clip.safe_write", "clip.cpu_kernels", "clip.shm_collectives", "clip.presets", "clip.loss_modes", "clip.tokenizer", "clip.transforms",
     "clip.transformer", "clip.torch_archive", "clip.data", "clip.data.*", "clip.config"],
    ["clip.*", "clip.buckets", "clip.distributed", "clip.checkpoint", "clip.metrics", "clip.encode", "clip.model", "clip.loss",
     "clip.zeroshot", "clip.retrieval", "clip.predict", "clip.train", "clip.convert"],
    ["clip.app"],
    ["clip.trainer", "clip.eval", "clip.__main__"],
]

# Imports that are never allowed, whatever the layers say: (importing package, imported top-level name).
FORBIDDEN = {("launcher", "mindspore"), ("launcher", "clip"), ("clip", "launcher"),
             ("common", "mindspore"), ("common", "clip"), ("common", "launcher")}


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


def layer_of(module: str) -> int:
    """The layer naming the module exactly, else the first one whose glob matches it."""
    exact = [i for i, layer in enumerate(LAYERS) if module in layer]
    globbed = [i for i, layer in enumerate(LAYERS) for pattern in layer if fnmatch.fnmatchcase(module, pattern)]
    assert exact or globbed, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return (exact or globbed)[0]


@pytest.mark.parametrize("module", all_modules())
def test_no_forbidden_and_no_upward_imports(module):
    mine = layer_of(module)
    for name in sorted(imports_of(module)):
        assert (module.split(".")[0], name.split(".")[0]) not in FORBIDDEN, f"{module} imports {name}"
        if name.split(".")[0] in PACKAGES:
            assert layer_of(name) <= mine, (f"{module} (layer {mine}) imports {name} (layer {layer_of(name)}): "
                                            f"a lower layer may not import a higher one")


def test_the_check_sees_imports():
    """The reader finds what is there, so a passing layer test means something."""
    assert "common.errors" in imports_of("launcher.run")
    assert "mindspore" in imports_of("clip.distributed")
    assert "common.backends.dynamic" in imports_of("launcher.plan")
    assert layer_of("clip.app") > layer_of("clip.model") > layer_of("clip.data.cifar100")
