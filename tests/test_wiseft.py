"""WiSE-FT (`python -m clip.wiseft`): the endpoints are the inputs exactly, 0.5 is the mean, only the model's
parameters are mixed, other architectures are refused in one line, and a sweep writes its table and plot."""
import dataclasses

import numpy as np
import pytest

from clip.model import wiseft
from clip.model.architectures import expected_shapes, get_config


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A zero-shot weights file and a fine-tuned *training* checkpoint (optimiser state, run position, moving
    averages of all but `logit_scale`) of clip_tiny, and a weights file of a one-block variant."""
    import mindspore as ms

    from clip.model import create_model
    from clip.model.weights import write
    from clip.train import checkpoint

    root = tmp_path_factory.mktemp("wiseft")
    ms.set_seed(1)
    zero_shot = create_model("clip_tiny")
    write(str(root / "zs.ckpt"), zero_shot, architecture=zero_shot.config)
    ms.set_seed(2)
    tuned = create_model("clip_tiny")
    state = ms.Parameter(ms.Tensor(np.ones(3, np.float32)), name="adam_m.logit_scale")
    averages = {p.name: p.asnumpy() + 0.25 for p in tuned.get_parameters() if p.name != "logit_scale"}
    ema = [ms.Parameter(ms.Tensor(value), name=f"ema.{name}") for name, value in averages.items()]
    ft = checkpoint.save(list(tuned.get_parameters()) + [state] + ema, str(root / "run"),
                         {"step": 5, "epoch": 0, "step_in_epoch": 5, "global_batch": 8, "seed": 2}, 1, tuned.config)
    shallow = dataclasses.replace(get_config("clip_tiny"), vision_layers=1)
    other = create_model(shallow)
    write(str(root / "shallow.ckpt"), other, architecture=other.config)
    return {"root": root, "zs": str(root / "zs.ckpt"), "ft": ft, "shallow": str(root / "shallow.ckpt"),
            "zs_params": {p.name: p.asnumpy() for p in zero_shot.get_parameters()},
            "ft_params": {p.name: p.asnumpy() for p in tuned.get_parameters()}, "ft_averages": averages}


def run(argv) -> int:
    from clip import wiseft as cli

    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def stored(path):
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items() if not isinstance(v, str)}


def test_alpha_0_and_1_are_the_inputs_and_half_is_the_mean(pair, tmp_path, capsys):
    out = {}
    for alpha in ("0", "1", "0.5"):
        path = str(tmp_path / f"mix_{alpha}.ckpt")
        assert run([pair["zs"], pair["ft"], "--alpha", alpha, path]) == 0
        out[alpha] = stored(path)
    names = set(expected_shapes(get_config("clip_tiny")))
    assert set(out["0"]) == set(out["1"]) == set(out["0.5"]) == names  # no optimiser state, no run position
    for name in names:
        zs, ft = pair["zs_params"][name], pair["ft_params"][name]
        assert np.array_equal(out["0"][name], zs) and np.array_equal(out["1"][name], ft), name
        mean = ((zs.astype(np.float64) + ft.astype(np.float64)) / 2).astype(np.float32)
        assert np.array_equal(out["0.5"][name], mean), name
    assert not np.array_equal(pair["zs_params"]["visual.proj"], pair["ft_params"]["visual.proj"])
    assert "wrote" in capsys.readouterr().out
    from clip.model.factory import load_model

    assert load_model(str(tmp_path / "mix_0.5.ckpt")).config == get_config("clip_tiny")  # carries its architecture


def test_ema_weights_mix_the_fine_tuned_runs_averages(pair, tmp_path):
    """--ema-weights takes FINETUNED's moving averages (logit_scale, without one, its raw value); at alpha 1 the
    output is them as a plain weights file."""
    ema = {**pair["ft_params"], **pair["ft_averages"]}
    for alpha in ("1", "0.5"):
        path = str(tmp_path / f"ema_{alpha}.ckpt")
        assert run([pair["zs"], pair["ft"], "--alpha", alpha, "--ema-weights", path]) == 0
        out = stored(path)
        assert set(out) == set(expected_shapes(get_config("clip_tiny")))
        for name, value in out.items():
            zs = pair["zs_params"][name].astype(np.float64)
            want = ema[name] if alpha == "1" else ((zs + ema[name].astype(np.float64)) / 2).astype(np.float32)
            assert np.array_equal(value, want), (alpha, name)
    assert run([pair["zs"], pair["zs"], "--alpha", "1", "--ema-weights", str(tmp_path / "none.ckpt")]) == 2
    assert not (tmp_path / "none.ckpt").exists()


def test_other_architectures_are_refused_in_one_line(pair, tmp_path, capsys):
    out = tmp_path / "mix.ckpt"
    assert run([pair["zs"], pair["shallow"], "--alpha", "0.5", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vision_layers 1" in err[0] and "vision_layers 2" in err[0] and not out.exists()


def test_mix_keeps_the_zero_shot_dtype_and_checks_alpha():
    zs, ft = {"w": np.array([1.0, -0.0], np.float16)}, {"w": np.array([3.0, 1.0], np.float32)}
    assert wiseft.mix(zs, ft, 0.5)["w"].dtype == np.float16 and wiseft.mix(zs, ft, 1)["w"].dtype == np.float16
    assert np.array_equal(wiseft.mix(zs, ft, 0.5)["w"], np.array([2.0, 0.5], np.float16))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(Exception, match="expected a number from 0"):
            wiseft.check_alpha(bad, "--alpha")


def test_a_sweep_writes_one_table_and_a_plot(pair, tmp_path, capsys):
    out = tmp_path / "sweep"
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"data:\n  eval: {{type: shapes, split: val, num_samples: 24}}\noutput_dir: {out}\n"
                   f"train: {{eval_batch_size: 24}}\n")
    assert run([pair["zs"], pair["ft"], "--alphas", "0,0.5,1", "--eval", str(cfg)]) == 0
    lines = (out / "wiseft.csv").read_text().splitlines()
    assert lines[0] == "alpha,top1,top5" and [float(r.split(",")[0]) for r in lines[1:]] == [0, 0.5, 1]
    assert all(0 <= float(v) <= 100 for r in lines[1:] for v in r.split(",")[1:])
    md = (out / "wiseft.md").read_text()
    assert "| alpha | top1 | top5 |" in md and md.count("\n| ") == 4
    assert (out / "wiseft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.count("alpha ") == 3
