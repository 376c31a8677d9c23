"""`python -m clip --config FILE --run_mode train|eval|predict`: one command with run modes, for people used
to MindFormers' run_mindformer.py. Each mode runs its own tool's code: train = the job of `python -m clip.train`
(for many cards, scripts/run_distribute.sh runs that job on every card), eval = `python -m clip.eval`
(zero-shot on data.eval), predict = the `clip.predict` pipeline.

Weights for eval and predict: --checkpoint, else model.checkpoint, else the preset's converted weights in the
model directory ($CLIP_MODEL_DIR, see CLIPModel.from_pretrained). For train, --checkpoint is the starting point.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from clip.api.app import (
    configure_logging,
    decode_all,
    default_labels,
    evaluate_and_write,
    existing_file,
    expand_inputs,
    predict_images,
    weights_for,
    with_datasets,
    with_model,
)
from clip.config import add_config_arguments, load_config
from launcher import worker
from launcher.errors import ArgumentParser, UserError, exit_on_user_error, integer, path, text

RUN_MODES = ("train", "eval", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clip", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--run_mode", required=True, choices=RUN_MODES)
    parser.add_argument("--train_dataset_dir", metavar="DIR", type=path("path"),
                        help="data.train: a Flickr8k directory (or a CSV/TSV file of image paths and captions)")
    parser.add_argument("--eval_dataset_dir", metavar="DIR", type=path("dir"),
                        help="data.eval: a CIFAR-100 python-format directory or an image folder (one folder per class)")
    parser.add_argument("--predict_data", nargs="+", metavar="PATH", type=path("path"),
                        help="predict: image files or directories")
    parser.add_argument("--checkpoint", metavar="CKPT", type=path("file"), help="weights (train: start from them)")
    parser.add_argument("--candidate_labels", metavar="LABELS", type=text(nonempty=True),
                        help='predict: comma-separated labels "cat,dog,car" (default: class names of data.eval)')
    parser.add_argument("--top_k", type=integer(ge=1), default=3, help="predict: labels shown per image (default 3)")
    return parser


@exit_on_user_error
@worker.record
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    worker.install(stop_on_sigterm=args.run_mode == "train")  # train: SIGTERM saves and exits resumable
    configure_logging()
    if args.run_mode == "predict" and not args.predict_data:
        raise UserError("--run_mode predict needs --predict_data PATH (image files or directories)")
    for flag in ("predict_data", "candidate_labels"):
        if args.run_mode != "predict" and getattr(args, flag):
            raise UserError(f"--{flag} applies to --run_mode predict only")
    if args.top_k < 1:
        raise UserError(f"--top_k {args.top_k}: expected a positive integer")
    cfg = with_datasets(load_config(args.config, args.overrides), args.train_dataset_dir, args.eval_dataset_dir,
                        ("--train_dataset_dir", "--eval_dataset_dir"))

    if args.run_mode == "train":
        if args.checkpoint:
            cfg = with_model(cfg, checkpoint=existing_file(args.checkpoint, "--checkpoint"))
        from clip.train import train

        train(cfg)
    elif args.run_mode == "eval":
        evaluate_and_write(cfg, "zeroshot", weights_for(cfg, args.checkpoint))
    else:
        from clip.eval.predict import DEFAULT_TEMPLATE, check_labels, format_table
        from clip.model import load_model
        from clip.model.hf_tokenizer import attach

        labels = (check_labels([part.strip() for part in args.candidate_labels.split(",")], "--candidate_labels")
                  if args.candidate_labels else default_labels(cfg))
        paths, _ = expand_inputs(list(args.predict_data))
        images = decode_all(paths)
        model = load_model(cfg.model.name, weights_for(cfg, args.checkpoint), cfg.model.dtype,
                           ema_weights=cfg.model.ema_weights)
        attach(model, cfg.model.tokenizer)
        results = predict_images(model, images, labels, args.top_k, DEFAULT_TEMPLATE)
        print(format_table(list(zip(paths, results))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
