"""Where one train step's time goes: forward, backward, gradient all-reduce, optimiser, host, for ours and open_clip.

    python bench/bench_phases.py [--presets clip_tiny clip_vit_b_32] [--batch 16] [--ranks 1 2]
                                 [--locks none image] [--out bench/results/phases.json]

Each phase of clip.train's step is compiled as its own graph (GRAPH_MODE) and timed alone on the same fixed
inputs: forward (model + loss), forward+backward (gradients; backward = the difference), the mean all-reduce
of those gradients (bucketed with the token embedding as its indexed rows, as trained; for comparison bucketed
with the whole table, and MindSpore's per-tensor `nn.DistributedGradReducer`), the optimiser (AdamW + clamp),
and the host work of a step (numpy -> Tensor of the batch, and reading the loss back). The whole compiled step
is timed too: the phases add up to more than it (separate graphs cannot share buffers) but show the
proportions. 2 ranks run through the launcher with one core each (--bind-cores). open_clip (plain
torch.optim.AdamW) is broken down the same way in the same run. Medians of --repeats; load averages are
recorded. `--locks image` (LiT, `model.lock_image`) and `image_text` (both towers but their projections) also
run every configuration with those towers locked, ours and open_clip's (`lock_image_tower`, `lock_text_tower`),
and record how many gradient values each step computes and all-reduces.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from bench_train import fake_batch, run  # noqa: E402

from launcher.safe_write import write_json

REPEATS = {"clip_tiny": 10, "clip_vit_b_32": 2}
# --locks: LiT (the image tower locked) and both towers locked but their projections
LOCKS = {"none": {}, "image": {"lock_image": True, "image_unlocked": 0},
         "image_text": {"lock_image": True, "image_unlocked": 1, "lock_text": True, "text_unlocked": 1}}


def timed(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mindspore_worker(args) -> None:
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    from clip.config import load_config
    from clip.loss.contrastive import ContrastiveLoss, clamp_logit_scale
    from clip.model import create_model
    from clip.model.groups import lock_towers
    from clip.parallel import distributed
    from clip.train import NetWithLoss, TrainStep
    from clip.train.optim import GradientUpdate, build_optimizer

    ms.set_context(mode=ms.GRAPH_MODE)
    info = distributed.init_from_env()
    cfg = load_config(None, [f"model.name={args.preset}", f"train.batch_size={args.batch}", "train.lr=1e-4"])
    ms.set_seed(0)
    model = create_model(args.preset)
    lock_towers(model, **LOCKS[args.lock])
    t = cfg.train
    optimizer = build_optimizer(model, t.optimizer, t.weight_decay, t.beta1, t.beta2, t.eps)
    lr = ms.Tensor(np.float32(t.lr))
    loss_fn = ContrastiveLoss("local")
    net = NetWithLoss(model, loss_fn)
    weights = optimizer.parameters

    class Grads(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.net, self.weights, self.grad = net, weights, ops.GradOperation(get_by_list=True)

        def construct(self, images, tokens):
            return self.grad(self.net, self.weights)(images, tokens)

    class Update(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.update, self.logit_scale = GradientUpdate(optimizer), model.logit_scale

        def construct(self, grads, lr):
            return ops.depend(self.update(grads, lr), clamp_logit_scale(self.logit_scale))

    images_np, tokens_np = fake_batch(model.config, args.batch, seed=info.rank)
    images, tokens = ms.Tensor(images_np), ms.Tensor(tokens_np)
    grads_cell, update = Grads(), Update()
    phases = {}

    def sync(out):
        (out[0] if isinstance(out, tuple) else out).asnumpy()

    def phase(name, fn):
        sync(fn())  # compile
        distributed.barrier()
        phases[name] = timed(lambda: sync(fn()), args.repeats, before=distributed.barrier)

    phase("forward", lambda: net(images, tokens))
    phase("forward_backward", lambda: grads_cell(images, tokens))
    # mutable: a plain tuple of tensors would be compiled into each graph as constants (151 M values for ViT-B/32)
    grads = ms.mutable(grads_cell(images, tokens))
    if info.world_size > 1:
        bucketed = distributed.grad_reducer(weights, info)
        per_tensor = nn.DistributedGradReducer(weights, mean=True, degree=info.world_size,
                                               group=distributed.world_group())
        phase("all_reduce", lambda: bucketed(grads, tokens))  # as trained: the embedding as its indexed rows
        phase("all_reduce_whole_table", lambda: bucketed(grads))
        phase("all_reduce_per_tensor", lambda: per_tensor(grads))
        buckets = len(bucketed.ranges)
    else:
        phases["all_reduce"] = 0.0
        buckets = 0
    phase("optimizer", lambda: update(grads, lr))
    step = TrainStep(model, loss_fn, optimizer, distributed.grad_reducer(weights, info))
    phase("step", lambda: step(images, tokens, lr))
    loss = step(images, tokens, lr)[0]

    def host():
        ms.Tensor(images_np), ms.Tensor(tokens_np)
        float(loss.asnumpy())
    phases["host"] = timed(host, args.repeats)
    phases["host_loss_all_reduce"] = timed(
        lambda: distributed.all_reduce_sum(loss.asnumpy().reshape(1).astype(np.float64)), args.repeats,
        before=distributed.barrier) if info.world_size > 1 else 0.0
    phases["backward"] = phases["forward_backward"] - phases["forward"]
    table = distributed.all_reduce_sum(np.array([phases[k] for k in sorted(phases)], np.float64)) / info.world_size
    if info.rank == 0:
        out = {"ranks": info.world_size, "batch_per_rank": args.batch, "repeats": args.repeats, "lock": args.lock,
               "buckets": buckets, "gradient_values": int(sum(p.size for p in weights)),
               "parameters": int(sum(p.size for p in model.get_parameters())),
               "seconds": {k: round(float(v), 4) for k, v in zip(sorted(phases), table)}}
        Path(args.result).write_text(json.dumps(out))


def openclip_worker(args) -> None:
    import openclip_anchor
    import torch

    from clip.model.architectures import get_config

    torch.manual_seed(0)
    model = openclip_anchor.create(args.preset).train()
    lock = LOCKS[args.lock]
    if lock.get("lock_image"):
        model.lock_image_tower(unlocked_groups=lock["image_unlocked"])
    if lock.get("lock_text"):
        model.lock_text_tower(unlocked_layers=lock["text_unlocked"])
    opt = openclip_anchor.optimizer(model, fused=False)  # a frozen parameter never has a gradient: no state
    loss_fn = openclip_anchor.import_open_clip().ClipLoss()
    images, tokens = fake_batch(get_config(args.preset), args.batch, seed=0)
    images, tokens = torch.from_numpy(images), torch.from_numpy(tokens).long()
    state = {}

    def forward():
        state["loss"] = loss_fn(*model(images, tokens))

    def backward():
        opt.zero_grad(set_to_none=True)
        state["loss"].backward()

    def step():
        forward()
        backward()
        opt.step()

    step()
    out = {}
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        fwd = timed(forward, args.repeats)
        bwd = timed(backward, args.repeats, before=forward)
        optim = timed(opt.step, args.repeats, before=lambda: (forward(), backward()))
        whole = timed(step, args.repeats)
        out[str(threads)] = {"forward": round(fwd, 4), "backward": round(bwd, 4), "optimizer": round(optim, 4),
                             "step": round(whole, 4)}
    best = min(out, key=lambda k: out[k]["step"])
    Path(args.result).write_text(json.dumps({"threads": int(best), "lock": args.lock, "seconds": out[best],
                                             "gradient_values": sum(p.numel() for p in model.parameters()
                                                                    if p.requires_grad),
                                             "by_threads": out}))


def measure(kind: str, preset: str, batch: int, ranks: int, repeats: int, workdir: Path, lock: str = "none") -> dict:
    result = workdir / f"{kind}_{preset}_{ranks}_{lock}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--{kind}-worker", "--preset", preset,
           "--batch", str(batch), "--repeats", str(repeats), "--result", str(result), "--lock", lock]
    if ranks > 1:
        cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(ranks), "--bind-cores",
               "--log-dir", str(workdir / f"logs_{preset}_{ranks}"), "--no-chdir", "--"] + cmd
    run(cmd, timeout=3600)
    out = json.loads(result.read_text())
    out["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    print(f"{preset:14s} {kind:9s} ranks={ranks} lock={lock}: " +
          ", ".join(f"{k} {v:.4f}" for k, v in out["seconds"].items()) + f" (load {out['load_avg'][0]})", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(REPEATS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--locks", nargs="+", choices=list(LOCKS), default=["none"])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "phases.json"))
    parser.add_argument("--lock", choices=list(LOCKS), default="none", help=argparse.SUPPRESS)
    parser.add_argument("--mindspore-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--openclip-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mindspore_worker:
        mindspore_worker(args)
        return 0
    if args.openclip_worker:
        openclip_worker(args)
        return 0
    results = {"load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "batch_per_rank": args.batch,
               "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            repeats = args.repeats or REPEATS.get(preset, 5)
            entry = {}
            for lock in args.locks:
                suffix = "" if lock == "none" else f"_lock_{lock}"
                entry[f"open_clip{suffix}"] = measure("openclip", preset, args.batch, 1, repeats, Path(tmp), lock)
                for ranks in args.ranks:
                    entry[f"mindspore_{ranks}_rank{suffix}"] = measure("mindspore", preset, args.batch, ranks, repeats,
                                                                       Path(tmp), lock)
            results["presets"][preset] = entry
    results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(str(out), results, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
