"""Embedding throughput: our MindSpore CLIP against open_clip on torch, same weights, same CPU, same run.

    python bench/bench_embed.py [--model clip_vit_b_32] [--batch 32] [--rounds 5] [--mode graph]

Measures images/s (encode_image) and texts/s (encode_text) for both, interleaved round by round so
that load from other processes hits both alike; reports the best round (the least disturbed) and the
median, and writes them with their ratio to bench/results/embed.json (atomically).

The torch side is open_clip 3.3.0 itself (bench/openclip_anchor.py: its `-quickgelu` architecture,
loaded through a torchvision stand-in); our model gets open_clip's randomly initialised weights, whose
names are OpenAI's, so both compute the same function (the max difference is reported).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import sys
import time
from pathlib import Path

from launcher.safe_write import write_json

REPO = Path(__file__).resolve().parent.parent


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="clip_vit_b_32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mode", choices=("graph", "pynative", "jit"), default="graph",
                   help="MindSpore execution mode for our model")
    p.add_argument("--threads", type=int, default=usable_cores(),
                   help="OpenMP threads (MindSpore's CPU MatMul runs single-threaded unless OMP_NUM_THREADS is "
                        "set) and torch threads")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "embed.json"))
    return p.parse_args(argv)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(str(path), data, indent=2)


def summarise(times, batch):
    import numpy as np
    return {"best_per_s": round(batch / min(times), 3), "median_per_s": round(batch / float(np.median(times)), 3),
            "seconds": [round(t, 4) for t in times]}


def main(argv=None):
    args = parse_args(argv)
    # Must happen before MindSpore (OpenMP) and torch initialise their thread pools.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(REPO / "bench"))

    import mindspore as ms
    import numpy as np
    import openclip_anchor
    import torch
    from mindspore import Tensor, nn

    from clip.model import create_model
    from clip.model.architectures import get_config
    from clip.model.tokenizer import tokenize

    torch.set_num_threads(args.threads)
    if args.mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
    config = get_config(args.model)
    torch.manual_seed(0)
    reference = openclip_anchor.create(args.model).eval()
    state = reference.state_dict()
    model = create_model(config)
    for p in model.get_parameters():
        p.set_data(Tensor(state[p.name].numpy()))

    class Encode(nn.Cell):
        """Graph-mode entry point: only `construct` is compiled."""

        def __init__(self, model, image):
            super().__init__()
            self.model = model
            self.image = image

        def construct(self, x):
            return self.model.encode_image(x) if self.image else self.model.encode_text(x)

    if args.mode == "graph":
        ours_image, ours_text = Encode(model, True), Encode(model, False)
    elif args.mode == "jit":
        ours_image, ours_text = ms.jit(model.encode_image), ms.jit(model.encode_text)
    else:
        ours_image, ours_text = model.encode_image, model.encode_text

    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((args.batch, 3, config.image_size, config.image_size)).astype(np.float32)
    captions = [f"a photo of {n} {w} on a {c} table" + " with many small details" * (n % 5)
                for n, (w, c) in enumerate(zip(["cats", "dogs", "cups", "books"] * 16, ["red", "wooden"] * 32))]
    tokens = tokenize(captions[:args.batch], context_length=config.context_length)
    ms_pixels, ms_tokens = Tensor(pixels), Tensor(tokens)
    t_pixels, t_tokens = torch.from_numpy(pixels), torch.from_numpy(tokens).long()

    def timed(fn):
        start, cpu = time.perf_counter(), _process_cpu_seconds()
        out = fn()
        return time.perf_counter() - start, out, _process_cpu_seconds() - cpu

    runs = {
        "ours_image": lambda: ours_image(ms_pixels).asnumpy(),
        "open_clip_image": lambda: reference.encode_image(t_pixels).numpy(),
        "ours_text": lambda: ours_text(ms_tokens).asnumpy(),
        "open_clip_text": lambda: reference.encode_text(t_tokens).numpy(),
    }
    times = {k: [] for k in runs}
    cpu_times = {k: [] for k in runs}
    load_before = os.getloadavg()
    with torch.no_grad():
        first, outputs = {}, {}
        for name, fn in runs.items():
            first[name], outputs[name], _ = timed(fn)
        for _ in range(args.rounds):
            for name, fn in runs.items():
                wall, _, cpu = timed(fn)
                times[name].append(wall)
                cpu_times[name].append(cpu)
    load_after = os.getloadavg()

    result = {
        "model": args.model, "batch": args.batch, "dtype": "float32", "mode": args.mode,
        "threads": args.threads, "rounds": args.rounds,
        "machine": {"cpu": _cpu_name(), "usable_cores": usable_cores(), "python": platform.python_version(),
                    "mindspore": ms.__version__, "torch": torch.__version__,
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "reference": f"open_clip {openclip_anchor.import_open_clip().__version__} "
                     f"({openclip_anchor.OPEN_CLIP_NAMES.get(args.model, 'CLIP(quick_gelu=True)')}), "
                     f"torch {torch.__version__}",
        "max_abs_diff_image": float(np.abs(outputs["ours_image"] - outputs["open_clip_image"]).max()),
        "max_abs_diff_text": float(np.abs(outputs["ours_text"] - outputs["open_clip_text"]).max()),
        "first_call_seconds": {k: round(v, 2) for k, v in first.items()},
    }
    for name in runs:
        result[name] = summarise(times[name], args.batch)
        # CPU seconds spent by the whole process (all threads): less sensitive to other processes than
        # wall time; equal to wall time x threads when the threads are fully busy.
        result[name]["per_cpu_second_best"] = round(args.batch / min(cpu_times[name]), 3)
    for kind in ("image", "text"):
        ours, ref = result[f"ours_{kind}"], result[f"open_clip_{kind}"]
        result[f"ratio_{kind}_best"] = round(ours["best_per_s"] / ref["best_per_s"], 3)
        result[f"ratio_{kind}_median"] = round(ours["median_per_s"] / ref["median_per_s"], 3)
        result[f"ratio_{kind}_per_cpu_second"] = round(ours["per_cpu_second_best"] / ref["per_cpu_second_best"], 3)
    write_json_atomic(Path(args.out), result)
    print(f"{args.model} batch {args.batch} fp32 {args.mode}, {args.threads} threads "
          f"(load {load_before[0]:.1f} -> {load_after[0]:.1f})")
    for kind, unit in (("image", "images/s"), ("text", "texts/s")):
        print(f"  {unit:9s} ours {result[f'ours_{kind}']['best_per_s']:7.2f}  open_clip "
              f"{result[f'open_clip_{kind}']['best_per_s']:7.2f}  ratio {result[f'ratio_{kind}_best']:.2f} (best round), "
              f"{result[f'ratio_{kind}_median']:.2f} (median), {result[f'ratio_{kind}_per_cpu_second']:.2f} (per CPU-second)")
    print(f"  max |ours - open_clip|: image {result['max_abs_diff_image']:.1e}, text {result['max_abs_diff_text']:.1e}")
    print(f"  written to {args.out}")
    return 0


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
