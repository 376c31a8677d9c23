"""The optimiser side of the train step against torch: AdamW, clip_grad_norm_, LR schedules, loss scaling.

Both sides get the same initial parameters and the same gradient sequence; MindSpore runs the exact cells the
train step uses (`clip.optim.GradientUpdate` around the configured optimiser), compiled (GRAPH_MODE).
"""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Parameter, ParameterTuple, Tensor, nn

from clip.train.optim import GradientUpdate, build_optimizer, lr_schedule
from clip.train.precision import LossScaler

SHAPES = {"visual.proj": (6, 5), "ln_final.bias": (5,), "logit_scale": ()}
WD, BETAS, EPS, STEPS = 0.1, (0.9, 0.98), 1e-6, 20


class Params(nn.Cell):
    def __init__(self, init):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple([Parameter(Tensor(v), name=k) for k, v in init.items()])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    # gradient norms spanning three decades, so clipping changes the moments' history
    grads = [[(rng.standard_normal(s) * 10 ** rng.uniform(-2, 1)).astype(np.float32) for s in SHAPES.values()]
             for _ in range(STEPS)]
    lrs = lr_schedule("cosine", 1e-2, 1e-4, 3, STEPS).astype(np.float32)
    return init, grads, lrs


@pytest.fixture(scope="module")
def graph_mode():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=previous)


def run_mindspore(name, problem, clip=0.0, of_parameters=False):
    init, grads, lrs = problem
    model = Params(init)
    update = GradientUpdate(build_optimizer(model, name, WD, *BETAS, EPS), clip, of_parameters=of_parameters)
    history, norms = [], []
    for g, lr in zip(grads, lrs):
        norms.append(float(update(ms.mutable(tuple(Tensor(x) for x in g)), Tensor(lr)).asnumpy()))
        history.append({p.name: p.asnumpy().copy() for p in model.params})
    return history, norms


def run_torch(problem, clip=0.0):
    init, grads, lrs = problem
    params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.AdamW([{"params": [params["visual.proj"]], "weight_decay": WD},
                             {"params": [params["ln_final.bias"], params["logit_scale"]], "weight_decay": 0.0}],
                            lr=1e-2, betas=BETAS, eps=EPS)
    history, norms = [], []
    for g, lr in zip(grads, lrs):
        for p, x in zip(params.values(), g):
            p.grad = torch.tensor(x)
        for group in opt.param_groups:
            group["lr"] = float(lr)
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), clip if clip else math.inf)))
        opt.step()
        history.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return history, norms


def worst_relative(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) / max(float(np.max(np.abs(b[k]))), 1e-12) for k in b)


def test_adamw_matches_torch_for_20_steps_including_the_first(problem, graph_mode):
    ours, _ = run_mindspore("adamw", problem)
    ref, _ = run_torch(problem)
    errors = [worst_relative(o, r) for o, r in zip(ours, ref)]
    assert max(errors) <= 1e-6, f"step {int(np.argmax(errors)) + 1}: relative difference {max(errors):.3g}"
    # MindSpore's AdamWeightDecay (no bias correction) is visibly another optimiser from step 1 on
    theirs, _ = run_mindspore("adamweightdecay", problem)
    assert worst_relative(theirs[0], ref[0]) > 1e-3


@pytest.mark.parametrize("of_parameters", [False, True], ids=["fresh", "accumulated"])
def test_clipping_matches_torch_clip_grad_norm(problem, graph_mode, of_parameters):
    """Also the accumulation's form (`of_parameters`), where AdamW applies the clip factor tensor by tensor."""
    _, natural = run_torch(problem)
    max_norm = 0.5 * float(np.median(natural))
    ours, our_norms = run_mindspore("adamw", problem, clip=max_norm, of_parameters=of_parameters)
    ref, ref_norms = run_torch(problem, clip=max_norm)
    assert sum(n > max_norm for n in ref_norms) >= 5  # the clip is active on many steps
    assert np.allclose(our_norms, ref_norms, rtol=1e-6)
    errors = [worst_relative(o, r) for o, r in zip(ours, ref)]
    assert max(errors) <= 1e-6, f"step {int(np.argmax(errors)) + 1}: relative difference {max(errors):.3g}"
    unclipped, _ = run_mindspore("adamw", problem)
    assert worst_relative(unclipped[-1], ref[-1]) > 1e-3  # clipping changed the result


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_lr_schedules_follow_their_closed_forms(kind):
    lr, min_lr, warmup, steps = 1e-3, 1e-5, 4, 20
    got = lr_schedule(kind, lr, min_lr, warmup, steps)
    assert got.shape == (steps,)
    assert got[:warmup] == pytest.approx([lr * (t + 1) / warmup for t in range(warmup)], rel=1e-12)
    u = np.arange(steps - warmup) / (steps - warmup)
    expected = {"cosine": min_lr + (lr - min_lr) * (1 + np.cos(np.pi * u)) / 2,
                "linear": lr - (lr - min_lr) * u, "constant": np.full(steps - warmup, lr)}[kind]
    assert got[warmup:] == pytest.approx(expected, rel=1e-12)
    assert got[warmup] == pytest.approx(lr)
    # min_lr == lr (a constant rate) works for every kind; cosine_decay_lr used to raise here
    assert lr_schedule(kind, lr, lr, 0, 5) == pytest.approx([lr] * 5)


def test_loss_scaler_grows_after_the_interval_halves_on_overflow_and_stops_at_one():
    scaler = LossScaler(8.0, growth_interval=3)
    seen = [float(scaler(Tensor(ok)).asnumpy()) for ok in (True, True, True, True, False, True, False)]
    assert seen == [8.0, 8.0, 16.0, 16.0, 8.0, 8.0, 4.0]
    assert int(scaler.skipped.asnumpy()) == 2 and int(scaler.in_a_row.asnumpy()) == 1
    assert int(scaler.good_steps.asnumpy()) == 0
    floor = LossScaler(1.5)
    assert [float(floor(Tensor(False)).asnumpy()) for _ in range(3)] == [1.0, 1.0, 1.0]
    assert int(floor.in_a_row.asnumpy()) == 3


@pytest.mark.parametrize("of_parameters", [False, True], ids=["fresh", "accumulated"])
def test_a_non_finite_gradient_skips_the_step_and_changes_no_optimiser_state(problem, graph_mode, of_parameters):
    init, grads, lrs = problem
    model = Params(init)
    optimizer = build_optimizer(model, "adamw", WD, *BETAS, EPS)
    scaler = LossScaler(1024.0)
    update = GradientUpdate(optimizer, 1.0, scaler, of_parameters=of_parameters)
    state = lambda: {p.name: p.asnumpy().copy() for p in model.get_parameters()} | {
        p.name: p.asnumpy().copy() for p in optimizer.get_parameters() if p.name != "learning_rate"}
    before = state()
    bad = [g * 1024 for g in grads[0]]
    bad[1][2] = np.inf
    norm = update(ms.mutable(tuple(Tensor(x) for x in bad)), Tensor(lrs[0]))
    assert not math.isfinite(float(norm.asnumpy()))
    after = state()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a skipped step changed some state"
    assert float(scaler.scale.asnumpy()) == 512.0 and int(scaler.skipped.asnumpy()) == 1
    # the next finite (scaled) gradient is unscaled and applied as torch would apply the plain one
    update(ms.mutable(tuple(Tensor(g * 512) for g in grads[0])), Tensor(lrs[0]))
    ref, _ = run_torch((init, grads[:1], lrs[:1]), clip=1.0)
    assert worst_relative({p.name: p.asnumpy() for p in model.params}, ref[0]) <= 1e-6
    assert int(optimizer.global_step.asnumpy()[0]) == 1 and int(scaler.in_a_row.asnumpy()) == 0


def test_adamw_decays_before_the_adam_step_as_torch_does(graph_mode):
    """With a large lr * wd (0.05) the order shows: decaying after the step would also shrink the step."""
    init = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    grad = np.array([[0.3, -0.1], [0.2, 0.05]], np.float32)
    model = Params({"visual.proj": init})
    update = GradientUpdate(build_optimizer(model, "adamw", 0.5, *BETAS, EPS))
    update(ms.mutable((Tensor(grad),)), Tensor(np.float32(0.1)))
    p = torch.tensor(init, requires_grad=True)
    p.grad = torch.tensor(grad)
    torch.optim.AdamW([p], lr=0.1, betas=BETAS, eps=EPS, weight_decay=0.5).step()
    ours, ref = model.params[0].asnumpy(), p.detach().numpy()
    assert np.max(np.abs(ours - ref)) <= 1e-6 * np.max(np.abs(ref))
    step = init - ref - 0.05 * init  # the Adam step alone
    decayed_after = (init - step) * (1 - 0.05)
    assert np.max(np.abs(decayed_after - ref)) > 1e-3
