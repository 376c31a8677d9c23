"""The compiled train step of the native profile against the same step of the code at commit `--before`: are
the graphs MindSpore executes the same?

    python bench/compare_graphs.py [--before 3cdb81d] [--preset clip_vit_b_32] [--batch 8]

Why: on a shared machine a wall-clock A/B of two trees mixes the code's cost with the load's drift. What
MindSpore executes is load-free evidence: each tree compiles bench_train.py's 1-rank step (`--step-server`,
the before tree's clip package on its PYTHONPATH) with MindSpore's IR saving on (`MS_DEV_SAVE_GRAPHS=1`),
and the final kernel graph (`graph_build_0_*.ir`) and actor set are compared: kernels by op type, kernels by
op type and input/output shapes, the kernels' execution order, the custom kernels' entry points, and the
runtime's actors. Scope names (the cells' nesting) are left out: they differ between the trees and do not
run. Results go to bench/results/graphs_<preset>.json.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import bench_train  # noqa: E402

NODE = re.compile(r"^\s+%\d+\([^)]*\) = ([A-Za-z0-9_.:]+)\(")
# graph plumbing that schedules but runs no kernel
PLUMBING = {"Load", "UpdateState", "MakeTuple", "TupleGetItem", "Depend", "Return"}
ENTRY = re.compile(r'func_name: "[^"]*:([A-Za-z0-9_]+)"')
ACTOR = re.compile(r"AID : \d+_.*/([A-Za-z0-9_]+)-op\d+")


def nodes(ir_text: str) -> list:
    """(op, shapes) of every node of a saved .ir graph, in the order the file lists them (pure)."""
    lines = ir_text.splitlines()
    out = []
    for i, line in enumerate(lines):
        match = NODE.match(line)
        if match is None:
            continue
        shapes = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].strip().startswith(": (") else ""
        shapes = re.sub(r", elements_use_flags=\{[^}]*\}", "", shapes)
        out.append((match.group(1).replace("PrimFunc_", ""), shapes))
    return out


def summary(ir_dir: Path) -> dict:
    """What one tree's final graph runs."""
    graph = next(ir_dir.glob("graph_build_0_*.ir")).read_text()
    all_nodes = nodes(graph)
    kernels = [node for node in all_nodes if node[0] not in PLUMBING]
    actors = (ir_dir / "actor_set" / "final_actor_set_kernel_graph_0.ir").read_text()
    return {"kernels": len(kernels),
            "kernels_by_op": dict(sorted(collections.Counter(op for op, _ in kernels).items())),
            "signatures": collections.Counter(kernels),
            "order": all_nodes,
            "custom_entries": dict(sorted(collections.Counter(ENTRY.findall(graph)).items())),
            "actors": ACTOR.findall(actors)}


def dump(preset: str, batch: int, code: Path, extra_env: dict, ir_dir: Path) -> None:
    """Compile (and run once) the step of the tree `code`, saving its IR into `ir_dir`."""
    env = {**extra_env, "MS_DEV_SAVE_GRAPHS": "1", "MS_DEV_SAVE_GRAPHS_PATH": str(ir_dir)}
    server = bench_train.StepServer(preset, batch, code, env)
    print(f"{code}: compiled in {server.reply()['compile_s']} s", flush=True)
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="3cdb81d")
    parser.add_argument("--preset", default="clip_vit_b_32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before], cwd=REPO, check=True,
                       capture_output=True, text=True)
        try:
            # one at a time: each holds the whole model (several GB for ViT-B/32)
            dump(args.preset, args.batch, REPO, {"CLIP_PROFILE": "native"}, Path(tmp) / "ir_native")
            dump(args.preset, args.batch, tree, {}, Path(tmp) / "ir_before")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
        native, before = summary(Path(tmp) / "ir_native"), summary(Path(tmp) / "ir_before")
    differing = [{"op": op, "shapes": shapes, "native": native["signatures"][(op, shapes)],
                  "before": before["signatures"][(op, shapes)]}
                 for op, shapes in sorted(set(native["signatures"]) | set(before["signatures"]))
                 if native["signatures"][(op, shapes)] != before["signatures"][(op, shapes)]]
    result = {
        "command": " ".join(["python", "bench/compare_graphs.py"] + sys.argv[1:]),
        "before_commit": args.before, "preset": args.preset, "batch": args.batch,
        "cpu_model": bench_train.cpu_model(),
        "kernels": {"native": native["kernels"], "before": before["kernels"]},
        "kernels_by_op": {"native": native["kernels_by_op"], "before": before["kernels_by_op"]},
        "custom_kernel_entries": {"native": native["custom_entries"], "before": before["custom_entries"]},
        "signatures_differing": differing,
        "same_kernels_and_shapes": not differing,
        "same_execution_order": native["order"] == before["order"],
        "actors": {"native": len(native["actors"]), "before": len(before["actors"])},
        "same_actor_order": native["actors"] == before["actors"],
    }
    out = Path(args.out) if args.out else bench_train.RESULTS / f"graphs_{args.preset.removeprefix('clip_')}.json"
    from launcher.safe_write import write_json
    write_json(str(out), result, indent=2)
    print(f"{args.preset}: {native['kernels']} vs {before['kernels']} kernels, same kernels and shapes "
          f"{result['same_kernels_and_shapes']}, same order {result['same_execution_order']}, same actors "
          f"{result['same_actor_order']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
