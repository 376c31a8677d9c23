"""One real data-parallel worker that measures everything tests/test_distributed.py checks.

Run as every process of a MindSpore dynamic cluster (the scheduler too: it must leave inside
init_from_env). Each worker writes `<out>/worker_<rank>.json` with measured numbers, not verdicts:
collective results, gather values and gradients, parameter identity checks, and the gap between
data-parallel gradients (W ranks, batch B each) and single-process gradients of the W*B global batch
for each loss mode and execution mode (PYNATIVE, ms.jit, GRAPH_MODE).
"""
import json
import os
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from clip.loss.contrastive import LOSS_MODES, ContrastiveLoss
from clip.native.buckets import BucketedGradReducer, rows_are_fewer
from clip.parallel import distributed
from clip.parallel.distributed import AllGatherWithGrad, DistInfo

GLOBAL_BATCH = 8
IMAGE_DIM, TEXT_DIM, HIDDEN, EMBED = 12, 10, 16, 8
SINGLE = DistInfo(rank=0, world_size=1, backend="none", device_target="CPU")


class TinyCLIP(nn.Cell):
    """Two small MLP encoders and a learnable temperature: enough structure for exact gradient checks."""

    def __init__(self):
        super().__init__()
        self.image = nn.SequentialCell(nn.Dense(IMAGE_DIM, HIDDEN), nn.Tanh(), nn.Dense(HIDDEN, EMBED))
        self.text = nn.SequentialCell(nn.Dense(TEXT_DIM, HIDDEN), nn.Tanh(), nn.Dense(HIDDEN, EMBED))
        self.logit_scale = ms.Parameter(ms.Tensor(np.log(1 / 0.07), ms.float32), name="logit_scale")

    def construct(self, images, texts):
        image = self.image(images)
        text = self.text(texts)
        image = image / ops.norm(image, dim=-1, keepdim=True)
        text = text / ops.norm(text, dim=-1, keepdim=True)
        return image, text, ops.exp(self.logit_scale)


class WithLoss(nn.Cell):
    def __init__(self, net, loss):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss = loss

    def construct(self, images, texts):
        return self.loss(*self.net(images, texts))


class GradStep(nn.Cell):
    """Loss and mean-reduced gradients in one graph, the shape of a real compiled train step."""

    def __init__(self, with_loss, weights, reducer):
        super().__init__(auto_prefix=False)
        self.with_loss = with_loss
        self.weights = weights
        self.reducer = reducer
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, images, texts):
        loss = self.with_loss(images, texts)
        return loss, self.reducer(self.grad(self.with_loss, self.weights)(images, texts))


class GatherProbe(nn.Cell):
    def __init__(self, gather, weights):
        super().__init__()
        self.gather = gather
        self.weights = weights

    def construct(self, x):
        return (self.gather(x) * self.weights).sum()


def build_net(seed):
    ms.set_seed(seed)
    return TinyCLIP()


def run_step(step, images, texts, exec_mode):
    """(loss, grads) from a GradStep eagerly, under ms.jit, or compiled in GRAPH_MODE."""
    if exec_mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
        try:
            return step(images, texts)
        finally:
            ms.set_context(mode=ms.PYNATIVE_MODE)
    if exec_mode == "jit":
        return ms.jit(step)(images, texts)
    return step(images, texts)


def max_abs_diff(a, b):
    return float(max(np.abs(x.asnumpy() - y.asnumpy()).max() for x, y in zip(a, b)))


def gather_checks(info):
    """Forward equals the concatenation; backward is the sum over ranks of each rank's upstream slice."""
    rows = 3
    owned = [np.random.RandomState(100 + r).randn(rows, 4).astype(np.float32) for r in range(info.world_size)]
    upstream = [np.random.RandomState(200 + r).randn(rows * info.world_size, 4).astype(np.float32)
                for r in range(info.world_size)]
    expected_grad = sum(u[info.rank * rows:(info.rank + 1) * rows] for u in upstream)
    x = ms.Tensor(owned[info.rank])
    results = {}
    for name, transport in transports(info):
        gather = AllGatherWithGrad(info, transport)
        probe = GatherProbe(gather, ms.Tensor(upstream[info.rank]))
        results[f"value_error_{name}"] = float(np.abs(gather(x).asnumpy() - np.concatenate(owned)).max())
        grad_fn = ms.value_and_grad(probe)
        for exec_mode in ("pynative", "jit", "graph"):
            if exec_mode == "graph":
                ms.set_context(mode=ms.GRAPH_MODE)
                grad = ops.GradOperation()(probe)(x)
                ms.set_context(mode=ms.PYNATIVE_MODE)
            elif exec_mode == "jit":
                grad = ms.jit(grad_fn)(x)[1]
            else:
                grad = grad_fn(x)[1]
            results[f"grad_error_{name}_{exec_mode}"] = float(np.abs(grad.asnumpy() - expected_grad).max())
    results["grad_scale"] = float(np.abs(expected_grad).max())
    return results


def param_checks(info):
    same = build_net(7)
    distributed.check_identical_params(same)
    forked = build_net(7 + info.rank)
    try:
        distributed.check_identical_params(forked)
        fork_message = ""
    except RuntimeError as exc:
        fork_message = str(exc)
    distributed.broadcast_params(forked)
    distributed.check_identical_params(forked)
    reference = build_net(7)
    broadcast_error = max_abs_diff(reference.trainable_params(), forked.trainable_params())
    return {"fork_message": fork_message, "broadcast_error_vs_rank0_seed": broadcast_error}


def transports(info):
    """The reducer's collectives: MindSpore's, then the shared-memory ones (clip.shm_collectives)."""
    return (("mindspore", None), ("shared", distributed.step_collectives(info)))


def bucket_checks(info):
    """Largest gap between the bucketed reducer (buckets small enough to split, one tensor larger than a
    bucket, a scalar) and MindSpore's per-tensor DistributedGradReducer, eagerly and compiled."""
    rng = np.random.RandomState(50 + info.rank)
    shapes = [(3, 4), (), (1000,), (7,), (50, 60), (2,)]
    params = [ms.Parameter(ms.Tensor(np.zeros(s, np.float32)), name=f"bucket_p{i}") for i, s in enumerate(shapes)]
    grads = tuple(ms.Tensor(np.asarray(rng.randn(*s), np.float32)) for s in shapes)
    reference = nn.DistributedGradReducer(params, mean=True, degree=info.world_size,
                                          group=distributed.world_group())(grads)
    results = {"expected_shapes": [list(s) for s in shapes],
               "shared_in_use": distributed.step_collectives(info) is not None}
    for name, transport in transports(info):
        bucketed = BucketedGradReducer(params, info.world_size, distributed.world_group(),
                                       bucket_mb=4000 * 4 / 2 ** 20, transport=transport)
        results["buckets"] = [list(r) for r in bucketed.ranges]
        for exec_mode in ("pynative", "graph"):
            if exec_mode == "graph":
                ms.set_context(mode=ms.GRAPH_MODE)
            try:
                out = bucketed(grads)
            finally:
                ms.set_context(mode=ms.PYNATIVE_MODE)
            results[f"max_diff_{name}_{exec_mode}"] = max_abs_diff(out, reference)
            results[f"shapes_{name}_{exec_mode}"] = [list(o.shape) for o in out]
    results["rows"] = row_checks(info)
    return results


def row_checks(info):
    """The token embedding's gradient as the rows the tokens index (few tokens) and as the whole table (more
    tokens than rows), each against the per-tensor reducer; the table sits between two other gradients."""
    vocab, width = 300, 5
    params = [ms.Parameter(ms.Tensor(np.zeros(s, np.float32)), name=n)
              for n, s in (("before", (4, 3)), ("emb", (vocab, width)), ("after", (6,)))]
    results = {}
    for case, per_rank in (("rows", 2 * 3), ("table", 2 * vocab)):
        rng = np.random.RandomState(70 + info.rank)
        tokens = rng.randint(0, vocab - 1, size=(2, per_rank // 2)).astype(np.int32)  # never the last row
        tokens[0, 0] = 7  # one id on every rank: its row sums contributions
        table = np.zeros((vocab, width), np.float32)
        np.add.at(table, tokens.reshape(-1), rng.randn(tokens.size, width).astype(np.float32))
        grads = (ms.Tensor(rng.randn(4, 3).astype(np.float32)), ms.Tensor(table),
                 ms.Tensor(rng.randn(6).astype(np.float32)))
        reference = nn.DistributedGradReducer(params, mean=True, degree=info.world_size,
                                              group=distributed.world_group())(grads)
        results[case] = {"by_rows": rows_are_fewer(info.world_size, tokens.shape, vocab),
                         "nonzero_rows_expected": int((np.abs(reference[1].asnumpy()).sum(axis=1) > 0).sum())}
        for name, transport in transports(info):
            reducer = BucketedGradReducer(params, info.world_size, distributed.world_group(), embedding="emb",
                                          transport=transport)
            results[case]["buckets"] = [list(r) for r in reducer.ranges]
            results[case]["row_groups"] = [[list(r) for r in group] for group in reducer.row_groups]
            for exec_mode in ("pynative", "graph"):
                if exec_mode == "graph":
                    ms.set_context(mode=ms.GRAPH_MODE)
                try:
                    out = reducer(grads, ms.Tensor(tokens))
                finally:
                    ms.set_context(mode=ms.PYNATIVE_MODE)
                key = f"{name}_{exec_mode}"
                results[case][f"max_diff_{key}"] = max_abs_diff(out, reference)
                results[case][f"nonzero_rows_{key}"] = int((np.abs(out[1].asnumpy()).sum(axis=1) > 0).sum())
            # A value in a row no rank's tokens index shows which path ran: the row path never sends it.
            unused = table.copy()
            unused[vocab - 1] = 1.0
            out = reducer((grads[0], ms.Tensor(unused), grads[2]), ms.Tensor(tokens))
            results[case][f"unused_row_sent_{name}"] = bool(np.abs(out[1].asnumpy()[vocab - 1]).max() > 0)
    return results


def equivalence_checks(info):
    """Gap between data-parallel (loss, grads) and the single-process global-batch (loss, grads)."""
    rng = np.random.RandomState(0)
    images = rng.randn(GLOBAL_BATCH, IMAGE_DIM).astype(np.float32)
    texts = rng.randn(GLOBAL_BATCH, TEXT_DIM).astype(np.float32)
    local = GLOBAL_BATCH // info.world_size
    mine = slice(info.rank * local, (info.rank + 1) * local)

    net = build_net(3)
    weights = net.trainable_params()
    single_loss = WithLoss(net, ContrastiveLoss("local", SINGLE))
    single = GradStep(single_loss, weights, distributed.grad_reducer(weights, SINGLE))
    ref_loss, ref_grads = single(ms.Tensor(images), ms.Tensor(texts))
    results = {"grad_scale": float(max(np.abs(g.asnumpy()).max() for g in ref_grads)),
               "reference_loss": float(ref_loss.asnumpy())}
    reducer = distributed.grad_reducer(weights, info)
    for mode in LOSS_MODES:
        step = GradStep(WithLoss(net, ContrastiveLoss(mode, info)), weights, reducer)
        # The baseline only has to show that it differs; compiling it too would only cost time.
        for exec_mode in ("pynative",) if mode == "local_only" else ("pynative", "jit", "graph"):
            started = time.perf_counter()
            loss, grads = run_step(step, ms.Tensor(images[mine]), ms.Tensor(texts[mine]), exec_mode)
            global_loss = distributed.all_reduce_sum(float(loss.asnumpy())) / info.world_size
            results[f"{mode}/{exec_mode}"] = {
                "grad_error": max_abs_diff(grads, ref_grads),
                "loss_error": abs(global_loss - results["reference_loss"]),
                "seconds": time.perf_counter() - started,
            }
    return results


def main(out_dir):
    started = time.perf_counter()
    info = distributed.init_from_env()
    init_seconds = time.perf_counter() - started
    results = {"info": info.__dict__, "node_id": int(os.environ["MS_NODE_ID"]), "init_seconds": init_seconds,
               "idempotent": distributed.init_from_env() is info,
               "get_rank": distributed.get_rank(), "get_world_size": distributed.get_world_size()}
    results["sum_float"] = distributed.all_reduce_sum(info.rank + 0.5)
    results["sum_int_array"] = distributed.all_reduce_sum(np.array([info.rank, 2 ** 40 + info.rank])).tolist()
    summed = distributed.all_reduce_sum(ms.Tensor([info.rank + 1.0], ms.float32))
    counts = distributed.all_reduce_sum(ms.Tensor([[info.rank, 1]], ms.int32))
    results["sum_tensor"] = [str(summed.dtype), summed.asnumpy().tolist(), str(counts.dtype), counts.asnumpy().tolist()]
    distributed.barrier()
    results["gather"] = gather_checks(info)
    results["params"] = param_checks(info)
    results["buckets"] = bucket_checks(info)
    results["equivalence"] = equivalence_checks(info)
    distributed.barrier()
    results["seconds"] = time.perf_counter() - started
    path = os.path.join(out_dir, f"worker_{info.rank}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(sys.argv[1])
