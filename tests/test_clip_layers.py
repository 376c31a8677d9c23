"""The layers of clip/ (docs/ARCHITECTURE.md), read from the source: no module imports one above its layer,
at the top of the file or inside a function."""
import ast
from pathlib import Path

CLIP = Path(__file__).resolve().parent.parent / "clip"
FRONT_DOORS = {"clip.trainer", "clip.__main__", "clip.eval"}
APPLICATION = {"clip.app"}
FOUNDATIONS = {"clip.presets", "clip.loss_modes", "clip.config", "clip.tokenizer",
               "clip.transforms", "clip.torch_archive"}


def module_name(path: Path) -> str:
    parts = path.relative_to(CLIP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clip":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "clip")
    return found


def layer(name: str) -> int:
    if name in FRONT_DOORS:
        return 3
    if name in APPLICATION:
        return 2
    if name in FOUNDATIONS or name.startswith("clip.data"):
        return 0
    return 1


def test_no_module_imports_a_higher_layer():
    modules = {module_name(p): p for p in CLIP.rglob("*.py")}  # "clip" itself only re-exports, lazily
    assert {"clip.app", "clip.eval", "clip.trainer", "clip.config", "clip.data.registry"} <= set(modules)
    upward = []
    for name, path in modules.items():
        for target in imports_of(path):
            if target in modules and "clip" not in (name, target) and layer(target) > layer(name):
                upward.append(f"{name} -> {target}")
    assert upward == []

