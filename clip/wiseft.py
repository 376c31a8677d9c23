"""`python -m clip.wiseft`: WiSE-FT, mixing zero-shot and fine-tuned weights (clip.model.wiseft).

    python -m clip.wiseft ZEROSHOT.ckpt FINETUNED.ckpt --alpha 0.5 OUT.ckpt
    python -m clip.wiseft ZEROSHOT.ckpt FINETUNED.ckpt --alphas 0,0.25,0.5,0.75,1 --eval CONFIG [--set k=v]

The second form evaluates every mixture on the config's data.eval (zero-shot; --task retrieval: data.retrieval)
and writes <output_dir>/wiseft.csv, wiseft.md and wiseft.png: one row per alpha, one curve per metric.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from launcher import worker
from launcher.errors import ArgumentParser, UserError, exit_on_user_error, number, path, text

OUTPUTS = ("wiseft.csv", "wiseft.md", "wiseft.png")
TASKS = ("zeroshot", "retrieval")


def parse_alphas(text: str) -> list[float]:
    from clip.model.wiseft import check_alpha

    values = []
    for part in text.split(","):
        try:
            values.append(check_alpha(float(part), "--alphas"))
        except ValueError:
            raise UserError(f"--alphas {text!r}: {part.strip()!r} is not a number; expected e.g. 0,0.25,0.5,0.75,1"
                            ) from None
    if len(set(values)) != len(values):
        raise UserError(f"--alphas {text!r}: an alpha is listed twice")
    return values


def metrics_of(result: dict, task: str) -> dict:
    """The numbers a row shows: top-1 / top-5 (or mean average precision), or every recall@k."""
    if task == "retrieval":
        return {k: v for k, v in result.items() if "_R@" in k}
    keys = ("mean_average_precision",) if "mean_average_precision" in result else ("top1", "top5")
    return {k: result[k] for k in keys}


def table_csv(rows: list[dict]) -> str:
    keys = list(rows[0])
    return ",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows)


def table_md(rows: list[dict], title: str) -> str:
    keys = list(rows[0])
    lines = [title, "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r['alpha']:g}" if k == "alpha" else f"{r[k]:.2f}" for k in keys) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from launcher.safe_write import write_with

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [k for k in rows[0] if k != "alpha"]:
        ax.plot([r["alpha"] for r in rows], [r[key] for r in rows], "o-", label=key)
    ax.set_xlabel("alpha (0 = zero-shot, 1 = fine-tuned)")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    try:
        write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def sweep(zero_shot_path: str, fine_tuned_path: str, alphas: list[float], cfg, task: str,
          ema_weights: bool = False) -> list[dict]:
    """Evaluate every mixture; one model is built and its parameters replaced per alpha."""
    import mindspore as ms

    from clip.api.app import dataset_for, load_source
    from clip.model import create_model
    from clip.model.wiseft import mix

    data = dataset_for(cfg, task)
    source = load_source(task, data)  # data mistakes fail before any model is built
    config, zero_shot, fine_tuned = load_pair(zero_shot_path, fine_tuned_path, ema_weights)
    model = create_model(config, dtype=cfg.model.dtype)
    model.set_train(False)
    params = {p.name: p for p in model.get_parameters()}
    rows = []
    for alpha in alphas:
        for name, value in mix(zero_shot, fine_tuned, alpha).items():
            params[name].set_data(ms.Tensor(value))
        if task == "retrieval":
            from clip.eval.retrieval import evaluate_captions

            result = evaluate_captions(model, source, config.image_size, cfg.train.eval_batch_size, data.recall_k)
        else:
            from clip.eval.zeroshot import evaluate_source

            result = evaluate_source(model, source, config.image_size, cfg.train.eval_batch_size)
        rows.append({"alpha": alpha, **metrics_of(result, task)})
        print(f"alpha {alpha:g}: " + " ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k != "alpha"),
              flush=True)
    return rows


def load_pair(zero_shot_path: str, fine_tuned_path: str, ema_weights: bool = False):
    from clip.model.wiseft import check_same_architecture, load

    config, zero_shot = load(zero_shot_path, "ZEROSHOT")
    other, fine_tuned = load(fine_tuned_path, "FINETUNED", ema_weights)
    check_same_architecture(config, other, zero_shot_path, fine_tuned_path)
    return config, zero_shot, fine_tuned


def build_parser() -> ArgumentParser:
    from clip.config import add_config_arguments

    parser = ArgumentParser(prog="python -m clip.wiseft",
                            description="WiSE-FT: mix zero-shot and fine-tuned weights, or evaluate several mixtures.")
    parser.add_argument("zero_shot", metavar="ZEROSHOT.ckpt", type=path("maybe_file"),
                        help="the weights fine-tuning started from")
    parser.add_argument("fine_tuned", metavar="FINETUNED.ckpt", type=path("maybe_file"),
                        help="fine-tuned weights or a training checkpoint")
    parser.add_argument("out", metavar="OUT.ckpt", nargs="?", type=path("output_file"),
                        help="the mixture (with --alpha)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--alpha", type=number(ge=0, le=1), help="weight of the fine-tuned checkpoint, 0..1")
    mode.add_argument("--alphas", type=text(nonempty=True),
                      help="comma-separated alphas to evaluate (with --eval), e.g. 0,0.25,0.5,0.75,1")
    parser.add_argument("--eval", dest="eval_config", metavar="CONFIG", type=path("file"),
                        help="run config whose data.eval (or data.retrieval) evaluates each mixture, and whose "
                             "output_dir receives wiseft.csv, wiseft.md, wiseft.png")
    parser.add_argument("--task", choices=TASKS, default="zeroshot", help="with --eval: what to measure")
    parser.add_argument("--ema-weights", action="store_true",
                        help="FINETUNED's moving averages (a training checkpoint of a run with train.ema_decay) "
                             "instead of its raw weights; with --alpha 1, writes them as a plain weights file")
    add_config_arguments(parser)
    return parser


@exit_on_user_error
@worker.record
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # OUT.ckpt may follow --alpha
    from clip.model.wiseft import check_alpha, mix, save
    from clip.train.preflight import check_output_file

    if args.alpha is not None:
        if args.out is None or args.eval_config:
            raise UserError("--alpha writes one mixture: give OUT.ckpt and no --eval (--alphas evaluates several)")
        alpha = check_alpha(args.alpha, "--alpha")
        check_output_file(args.out, "OUT.ckpt")
        config, zero_shot, fine_tuned = load_pair(args.zero_shot, args.fine_tuned, args.ema_weights)
        save(args.out, mix(zero_shot, fine_tuned, alpha), config)
        print(f"wrote {args.out}: {1 - alpha:g} x {args.zero_shot} + {alpha:g} x {args.fine_tuned}", flush=True)
        return 0
    if args.out is not None or not args.eval_config:
        raise UserError("--alphas evaluates mixtures: give --eval CONFIG and no OUT.ckpt (--alpha writes one)")
    from clip.config import load_config

    alphas = parse_alphas(args.alphas)
    cfg = load_config(args.eval_config, args.overrides)
    paths = [os.path.join(cfg.output_dir, name) for name in OUTPUTS]
    for path in paths:
        check_output_file(path, "output_dir")
    rows = sweep(args.zero_shot, args.fine_tuned, alphas, cfg, args.task, args.ema_weights)
    from launcher.safe_write import write_text

    title = f"WiSE-FT: {args.zero_shot} (alpha 0) to {args.fine_tuned} (alpha 1), {args.task}"
    write_text(paths[0], table_csv(rows))
    write_text(paths[1], table_md(rows, title))
    plot(rows, paths[2], title)
    print(f"wrote {', '.join(paths)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
