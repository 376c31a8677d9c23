"""`python -m clip.eval`: zero-shot classification (data.eval) or image-text retrieval (data.retrieval) of a
checkpoint, with the same typed config as training.

On many cards rank 0 evaluates and the other ranks finish at once, unless --sharded asks every rank to
evaluate its share (counts are summed over ranks, which gives the single-card numbers exactly).
Results go to `<output_dir>/eval.json` (zero-shot) or `<output_dir>/retrieval.json`, written atomically.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional

from clip.errors import UserError, exit_on_user_error
from clip.safe_write import write_json

log = logging.getLogger("clip.eval")

TASKS = ("zeroshot", "retrieval")
RESULT_FILES = {"zeroshot": "eval.json", "retrieval": "retrieval.json"}


def dataset_for(cfg, task: str):
    """The dataset config the task reads, or a UserError naming the missing config key."""
    data = cfg.data.eval if task == "zeroshot" else cfg.data.retrieval
    key = "data.eval" if task == "zeroshot" else "data.retrieval"
    if data is None:
        raise UserError(f"{key} is not set; --task {task} needs a dataset there")
    return data


def load_source(task: str, data):
    from clip.data import build_eval_source, build_train_source

    return build_eval_source(data) if task == "zeroshot" else build_train_source(data)


def run(cfg, task: str, checkpoint: Optional[str], sharded: bool) -> Optional[dict]:
    """Evaluate and return the result on the rank that writes it (None on the others).

    Every rank reads the dataset first (no MindSpore needed), so that data mistakes fail fast everywhere."""
    data = dataset_for(cfg, task)
    if task == "retrieval" and data.split == "train":
        log.warning("data.retrieval.split is 'train'; retrieval results are usually reported on the test split")
    source = load_source(task, data)
    from clip import distributed

    info = distributed.init_from_env()
    sharded = sharded and info.world_size > 1
    if not sharded and info.rank != 0:
        # Nothing to wait for: a barrier here would fail once rank 0's evaluation outlasts the CPU collective
        # timeout (tens of seconds, MS_CPU_COMM_OP_TIMEOUT), and a worker that ends cleanly does not disturb
        # the others in a dynamic cluster.
        log.info("rank %d of %d: rank 0 evaluates (pass --sharded to share the work)", info.rank, info.world_size)
        return None
    result = evaluate(cfg, task, data, source, checkpoint, sharded)
    result.update(world_size=info.world_size, sharded=sharded)
    return result if info.rank == 0 else None


def evaluate(cfg, task: str, data, source, checkpoint: Optional[str], sharded: bool) -> dict:
    """Build the model from the config (and checkpoint) and evaluate it on the source."""
    from clip.model import create_model

    started = time.time()
    checkpoint = checkpoint or cfg.model.checkpoint
    if not checkpoint:
        log.warning("no checkpoint given (--checkpoint or model.checkpoint): evaluating random weights")
    model = create_model(cfg.model.name, checkpoint=checkpoint, dtype=cfg.model.dtype)
    model.set_train(False)
    image_size, batch_size = model.config.image_size, cfg.train.eval_batch_size
    if task == "zeroshot":
        from clip.zeroshot import evaluate_source

        result = evaluate_source(model, source, image_size, batch_size, sharded)
    else:
        from clip.retrieval import evaluate_captions

        result = evaluate_captions(model, source, image_size, batch_size)
    result.update(task=task, model=cfg.model.name, checkpoint=checkpoint, dtype=cfg.model.dtype,
                  dataset={"type": data.type, "path": data.path, "split": data.split},
                  seconds=round(time.time() - started, 3))
    return result


def report(result: dict, task: str) -> str:
    """The one-line summary printed on stdout."""
    if task == "zeroshot":
        return (f"zero-shot top1 {result['top1']:.2f}% top5 {result['top5']:.2f}% on {result['n']} images, "
                f"{result['classes']} classes x {result['templates']} templates")
    parts = [f"{k} {v:.2f}" for k, v in result.items() if "_R@" in k]
    return f"retrieval {result['images']} images {result['captions']} captions: " + " ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    from clip.config import add_config_arguments

    parser = argparse.ArgumentParser(prog="python -m clip.eval",
                                     description="Zero-shot accuracy (data.eval) or image-text retrieval "
                                                 "(data.retrieval) of a checkpoint.")
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", help="weights to evaluate (default: model.checkpoint)")
    parser.add_argument("--task", choices=TASKS, default="zeroshot",
                        help="zeroshot: eval.json from data.eval; retrieval: retrieval.json from data.retrieval")
    parser.add_argument("--sharded", action="store_true",
                        help="zero-shot on many cards: every rank evaluates a shard, counts are summed")
    return parser


@exit_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    from clip.config import load_config

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.sharded and args.task != "zeroshot":
        raise UserError("--sharded applies to --task zeroshot only")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UserError(f"--checkpoint {args.checkpoint!r} does not exist")
    cfg = load_config(args.config, args.overrides)
    result = run(cfg, args.task, args.checkpoint, args.sharded)
    if result is not None:
        if args.task == "zeroshot":
            from clip.zeroshot import confusion_summary

            log.info("%s", confusion_summary(result["worst"]))
        path = os.path.join(cfg.output_dir, RESULT_FILES[args.task])
        write_json(path, result)
        print(report(result, args.task))
        log.info("wrote %s", path)
    return 0
