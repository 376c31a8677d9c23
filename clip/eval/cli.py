"""`python -m clip.eval`: zero-shot classification (data.eval), image-text retrieval (data.retrieval) or a
linear probe (data.eval's train split, then its evaluated split) of a checkpoint, with the same typed config
as training.

On many cards rank 0 evaluates and the other ranks finish at once, unless --sharded asks every rank to
evaluate its share (counts are summed over ranks, which gives the single-card numbers exactly).
Results go to `<output_dir>/eval.json` (zero-shot), `retrieval.json` or `linear_probe.json`, and in
CLIP_benchmark's format to `clip_benchmark_<task>.json`, written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from clip.api.app import TASKS, configure_logging, evaluate_and_write
from clip.config import add_config_arguments, load_config
from clip.model import hf_tokenizer
from launcher import worker
from launcher.errors import ArgumentParser, UserError, exit_on_user_error, path


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clip.eval",
                                     description="Zero-shot accuracy (data.eval) or image-text retrieval "
                                                 "(data.retrieval) of a checkpoint.")
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", type=path("file"), help="weights to evaluate (default: model.checkpoint)")
    hf_tokenizer.add_argument(parser)
    parser.add_argument("--task", choices=TASKS, default="zeroshot",
                        help="zeroshot: eval.json from data.eval; retrieval: retrieval.json from data.retrieval; "
                             "linear_probe: linear_probe.json from data.eval's train and evaluated splits")
    parser.add_argument("--sharded", action="store_true",
                        help="on many cards every rank encodes a share of the images (and texts), the shares "
                             "are summed: the single card's numbers")
    return parser


@exit_on_user_error
@worker.record
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    worker.install()
    configure_logging()
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UserError(f"--checkpoint {args.checkpoint!r} does not exist")
    tokenizer = hf_tokenizer.override(args.tokenizer)
    cfg = load_config(args.config, args.overrides + tokenizer)
    evaluate_and_write(cfg, args.task, args.checkpoint, args.sharded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
