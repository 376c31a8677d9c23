"""Where a compiled step's memory goes on the CPU backend: MindSpore's pool against the process RSS.

    python bench/bench_cpu_memory.py [--batch 64] [--out bench/results/cpu_memory_probe.json]

One fresh process per variant computes the weight gradients of 4 attention sub-blocks at ViT-B/32 width
(768, 12 heads, 50 tokens, GRAPH_MODE) and reports the RSS it gained over the call and the peak of
MindSpore's memory pool (`MS_DEV_RUNTIME_CONF=memory_statistics:True`). Variants: the model's attention
(`clip.transformer.MultiheadAttention`), its QKV projection with the two head transposes but no scores, and
the same projection with plain slices instead (no transposes). What the RSS gains beyond the pool is memory
that CPU kernels hold outside MindSpore's allocator; bench_memory.py explains why it matters.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_memory import pool_peak_gib  # noqa: E402

from launcher.safe_write import write_json  # noqa: E402

VARIANTS = ("attention", "head_transposes", "slices")
LAYERS, WIDTH, HEADS, TOKENS = 4, 768, 12, 50


def worker(variant: str, batch: int) -> None:
    sys.path.insert(0, str(REPO))
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    from clip.model.transformer import MultiheadAttention

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.attn = nn.CellList([MultiheadAttention(WIDTH, HEADS, LAYERS, ms.float32) for _ in range(LAYERS)])
            self.mask = Tensor(np.zeros((TOKENS, TOKENS), np.float32))

        def construct(self, x):
            n, length, width = x.shape
            for a in self.attn:
                if variant == "attention":
                    x = x + a(x, self.mask)
                    continue
                qkv = a.qkv_matmul(x.reshape(-1, width), a.in_proj_weight).reshape(n, length, 3 * width)
                if variant == "head_transposes":
                    heads = qkv.reshape(n, length, 3 * HEADS, WIDTH // HEADS).transpose(0, 2, 1, 3)
                    q = heads.transpose(0, 2, 1, 3).reshape(n, length, 3 * width)[:, :, :width]
                else:
                    q = qkv[:, :, :width]
                x = x + a.out_proj(q)
            return (x * x).sum()

    net = Net()
    x = Tensor(np.random.default_rng(0).standard_normal((batch, TOKENS, WIDTH)).astype(np.float32))
    grad = ms.grad(net, grad_position=None, weights=net.trainable_params())
    before = rss_gib()
    [g.asnumpy() for g in grad(x)]
    print(json.dumps({"rss_gain_gib": round(rss_gib() - before, 3)}))


def rss_gib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2 ** 20
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(variant: str, batch: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_"))}
    env.update(GLOG_v="3", MS_DEV_RUNTIME_CONF="memory_statistics:True")
    proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--batch", str(batch)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    out["pool_peak_gib"] = pool_peak_gib(proc.stdout + proc.stderr)
    out["outside_pool_gib"] = round(out["rss_gain_gib"] - (out["pool_peak_gib"] or 0.0), 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu_memory_probe.json"))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.batch)
        return 0
    results = {"batch": args.batch, "layers": LAYERS, "width": WIDTH, "heads": HEADS, "tokens": TOKENS,
               "qkv_tensor_mib": round(args.batch * TOKENS * 3 * WIDTH * 4 / 2 ** 20, 1), "unit": "GiB", "variants": {}}
    for variant in VARIANTS:
        results["variants"][variant] = measure(variant, args.batch)
        print(variant, results["variants"][variant], flush=True)
    write_json(args.out, results, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
