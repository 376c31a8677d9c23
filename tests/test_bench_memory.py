"""The arithmetic of bench/bench_memory.py: the memory line fit, the largest batch under a limit, the targets."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_memory  # noqa: E402


def test_fit_line_recovers_an_exact_line_and_least_squares_of_a_noisy_one():
    a, b = bench_memory.fit_line([16, 32, 64], [3.0 + 0.125 * x for x in (16, 32, 64)])
    assert a == pytest.approx(3.0) and b == pytest.approx(0.125)
    a, b = bench_memory.fit_line([0, 1, 2], [0.0, 2.0, 1.0])
    assert a == pytest.approx(0.5) and b == pytest.approx(0.5)
    with pytest.raises(ValueError, match="two distinct"):
        bench_memory.fit_line([16, 16], [1.0, 2.0])


def test_largest_batch_is_the_last_batch_under_the_limit():
    assert bench_memory.largest_batch(3.0, 0.125, 16.0) == 104  # 3 + 0.125 * 104 = 16 exactly
    assert bench_memory.largest_batch(3.0, 0.14, 16.0) == 92  # 92 -> 15.88 GiB, 93 -> 16.02 GiB
    assert bench_memory.largest_batch(17.0, 0.1, 16.0) == 0
    with pytest.raises(ValueError, match="positive"):
        bench_memory.largest_batch(3.0, 0.0, 16.0)


def run(batch, peak, after_build=1.0, step_s=1.0, accum=1, recompute=False, pool=None, card=None):
    return {"batch": batch, "accum_steps": accum, "global_batch": batch * accum, "recompute": recompute,
            "peak_rss_gib": peak, "pool_peak_gib": pool, "card_total_gib": card, "rss_after_build_gib": after_build, "step_increment_gib": peak - after_build,
            "step_s": step_s, "first_step_s": 10.0}


def test_summary_compares_equal_global_batches_and_judges_both_targets():
    runs = {"plain_16": run(16, 5.0, pool=1.0, card=3.0),
            "recompute_16": run(16, 4.0, step_s=1.3, recompute=True, pool=0.5, card=2.5),
            "plain_64": run(64, 10.0, step_s=4.0, pool=4.0, card=6.0),
            "recompute_64": run(64, 5.5, step_s=5.0, recompute=True, pool=2.6, card=4.6),
            "plain_16_x4": run(16, 5.6, step_s=6.0, accum=4, pool=1.05, card=3.6)}
    out = bench_memory.summarise(runs, [16, 64], 4)
    rows = {r["config"]: r for r in out["table"]}
    assert rows["recompute_64"]["step_time_vs_plain_same_global_batch"] == 1.25
    assert rows["plain_16_x4"]["step_time_vs_plain_same_global_batch"] == 1.5  # against plain_64
    assert "step_time_vs_plain_same_global_batch" not in rows["plain_16"]
    cut = out["targets"]["recompute_rss_cut"]
    assert cut["cut"] == 0.45 and cut["met"] and cut["batch"] == 64
    accum = out["targets"]["accumulation_rss_peak"]
    assert accum["over_plain"] == 0.12 and not accum["met"]
    pool_cut, pool_accum = out["targets"]["recompute_pool_cut"], out["targets"]["accumulation_pool_peak"]
    assert pool_cut["cut"] == 0.35 and not pool_cut["met"]
    assert pool_accum["over_plain"] == 0.05 and pool_accum["met"]
    assert rows["plain_64"]["pool_peak_gib"] == 4.0
    # the card total (state + pool) carries the gradient sum the pool does not see
    card_cut, card_accum = out["targets"]["recompute_card_total_cut"], out["targets"]["accumulation_card_total_peak"]
    assert card_cut["cut"] == pytest.approx(0.233, abs=1e-3) and not card_cut["met"]
    assert card_accum["over_plain"] == 0.2 and not card_accum["met"]


def test_a_run_without_pool_statistics_is_judged_on_rss_only():
    runs = {"plain_16": run(16, 5.0), "plain_64": run(64, 10.0), "recompute_64": run(64, 5.5, recompute=True)}
    assert set(bench_memory.summarise(runs, [16, 64], 4)["targets"]) == {"recompute_rss_cut"}


def test_pool_peak_is_read_from_the_runtime_exit_statistics():
    """The lines MindSpore 2.10 prints at exit with MS_DEV_RUNTIME_CONF=memory_statistics:True."""
    out = ("[MS_RUNTIME_PROF]Common mem pool info: Total allocated mem:3072M, peak used mem:2480M, in used mem:0M\n"
           "[MS_RUNTIME_PROF]The dynamic memory pool total allocated mem:3072M, min addr :0, max addr: 0, peak used "
           "mem:2480M, actual peak used mem:3071M, in used mem:0M, total used by event mem:0M\n"
           "[MS_RUNTIME_PROF]The dynamic memory pool total allocated mem:1024M, min addr :0, max addr: 0, peak used "
           "mem:512M, actual peak used mem:1000M\n")
    assert bench_memory.pool_peak_gib(out) == round(2480 / 1024, 3)
    assert bench_memory.pool_peak_gib("no statistics here") is None


def test_fit_and_predict_per_mode():
    runs = {f"plain_{b}": run(b, 3.0 + 0.125 * b) for b in (16, 32, 64)}
    runs["recompute_16"] = run(16, 3.5, recompute=True)
    fits = bench_memory.fit_and_predict(runs, [16, 32, 64], 16.0)
    assert fits["plain"]["largest_batch"] == 104 and fits["plain"]["b_mib_per_sample"] == 128.0
    assert "recompute" not in fits  # one point is no line


def test_depth_and_batch_fit_recovers_each_towers_costs_and_the_card_batch():
    """--big: the 6-point grid determines the fixed, per-block and per-sample costs; the largest card batch
    counts 18 bytes per parameter (22 when accumulating) and the per-sample cost at full depth."""
    truth = {"p0": 1.0, "pv": 0.3, "pt": 0.2, "s0": 0.01, "sv": 0.05, "st": 0.02}
    points = {k: bench_memory.at(truth, *k) for k in bench_memory.BIG_POINTS}
    fit = bench_memory.fit_depth_batch(points)
    assert fit == pytest.approx(truth)
    per_sample = bench_memory.per_sample_gib(fit, 32, 24)  # 0.01 + 32 * 0.05 + 24 * 0.02 = 2.09
    assert per_sample == pytest.approx(2.09)
    gib = 2 ** 30
    assert bench_memory.largest_card_batch(per_sample, gib, 24 / 0.9) == 2  # (24 - 18) / 2.09 = 2.87
    assert bench_memory.largest_card_batch(1.0, gib, 30 / 0.9) == 12  # 30 - 18
    assert bench_memory.largest_card_batch(1.0, gib, 30 / 0.9, accum_steps=4) == 8  # 30 - 22
    assert bench_memory.largest_card_batch(1.0, 2 * gib, 30 / 0.9) == 0  # 36 GiB of parameters alone
