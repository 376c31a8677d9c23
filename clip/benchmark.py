"""`python -m clip.benchmark`: every (checkpoint, dataset, task), then one table over all of them.

    python -m clip.benchmark --checkpoint a.ckpt b.ckpt --dataset imagenet:/data/imagenet \\
        clip_benchmark:/data/wds_cars --task zeroshot linear_probe --output runs/bench

Each evaluation is `python -m clip.eval`'s, written to `<output>/<checkpoint>/<dataset>/` (eval.json and its
CLIP_benchmark JSON); one whose CLIP_benchmark JSON is already there is skipped, so an interrupted benchmark
continues where it stopped. Zero-shot classifiers are kept in `<output>/cache/` per (checkpoint, class names,
templates). At the end every CLIP_benchmark JSON under the output is gathered into `results.csv` (one row per
evaluation, a column per metric, as `clip_benchmark build` writes), `results.md` (checkpoints x datasets,
each set's main metric in percent) and `results.png` (the same as grouped bars). One process, one card:
for several cards per evaluation use `python -m clip.eval --sharded`.

`--tokenizer` (a SigLIP vocabulary) goes to the checkpoints whose text tower needs one; OpenAI-BPE checkpoints
in the same benchmark are evaluated with their own tokenizer. Checkpoints of two vocabularies (SigLIP and
SigLIP2) take one run each into the same `--output`: the tables gather every result there.
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

from clip.model import hf_tokenizer
from launcher import worker
from launcher.errors import ArgumentParser, UserError, exit_on_user_error, path, read_user_file, text

TASKS = ("zeroshot", "retrieval", "linear_probe")
# The metric a table shows for each CLIP_benchmark task (multilabel sets: mean average precision).
MAIN_METRICS = ("acc1", "mean_average_precision", "image_retrieval_recall@5", "lp_acc1")


@dataclass(frozen=True)
class Dataset:
    type: str
    path: str
    split: Optional[str] = None


def parse_dataset(text: str, where: str) -> Dataset:
    """`TYPE:PATH` or `TYPE:PATH:SPLIT` (the split last, so that a path may hold a colon only with a split)."""
    from clip.data import EVAL_TYPES

    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise UserError(f"{where}: {text!r}: expected TYPE:PATH (types: {', '.join(EVAL_TYPES)})")
    if kind not in EVAL_TYPES:
        raise UserError(f"{where}: {text!r}: type {kind!r} is not an evaluation dataset "
                        f"(expected one of {', '.join(EVAL_TYPES)})")
    path, _, split = rest.rpartition(":") if rest.count(":") else (rest, "", "")
    if not os.path.exists(path):
        raise UserError(f"{where}: {text!r}: {path!r} does not exist")
    return Dataset(kind, path, split or None)


def read_dataset_file(path: str) -> list[Dataset]:
    """One TYPE:PATH[:SPLIT] per line; blank lines and `#` comments are skipped."""
    text = read_user_file(path, "--datasets-file (one TYPE:PATH per line)")
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(parse_dataset(line, f"{path}:{number}"))
    if not out:
        raise UserError(f"{path}: lists no dataset (one TYPE:PATH per line)")
    return out


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def job_config(base, dataset: Dataset, out_dir: str):
    """The run config of one evaluation: the base with data.eval replaced by the dataset."""
    import dataclasses

    from clip.config import validate

    current = base.data.eval or type(base.data.train)()
    split = dataset.split or ("test" if dataset.type in ("cifar100", "clip_benchmark") else "val")
    data = dataclasses.replace(current, type=dataset.type, path=dataset.path, split=split)
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, eval=data), output_dir=out_dir)
    problems = validate(cfg)
    if problems:
        raise UserError(f"{dataset.type}:{dataset.path}: {problems[0][0]}: {problems[0][1]}")
    return cfg


def tokenizer_for(architecture, tokenizer: Optional[str]) -> Optional[str]:
    """The tokenizer file a checkpoint of `architecture` (a CLIPConfig) is evaluated with: `tokenizer` when its
    text tower needs a vocabulary file, none for OpenAI's BPE, which needs none."""
    return tokenizer if architecture.hf_tokenizer_name is not None else None


def checkpoint_tokenizers(checkpoints: list[str], model, what: str) -> dict:
    """checkpoint -> the tokenizer file (`model.tokenizer`, named `what`) it is evaluated with, from each
    checkpoint's architecture, every one checked against the file before anything is evaluated; a tokenizer no
    checkpoint needs is refused, as the one-model commands refuse it."""
    from clip.model.factory import resolve_config
    from clip.model.weights import read

    chosen = {}
    for ckpt in checkpoints:
        architecture = resolve_config(model.name, read(ckpt, "--checkpoint"), ckpt)
        chosen[ckpt] = tokenizer_for(architecture, model.tokenizer)
        if chosen[ckpt]:
            hf_tokenizer.for_model(architecture, chosen[ckpt], what)
    if not any(chosen.values()):
        raise UserError(f"{what} {model.tokenizer!r}: no checkpoint needs it (it is for models with a SentencePiece "
                        f"/ Hugging Face vocabulary, SigLIP; OpenAI-BPE models take none)")
    return chosen


def plan(checkpoints: list[str], datasets: list[Dataset], tasks: list[str], base, output: str,
         tokenizers: Optional[dict] = None) -> list[tuple]:
    """(checkpoint, dataset, task, config, CLIP_benchmark JSON path) for every evaluation that applies; a
    CLIP_benchmark retrieval set is evaluated by retrieval once, whatever classification tasks are asked.
    `tokenizers` (checkpoint -> file or None) replaces model.tokenizer per checkpoint."""
    import dataclasses

    from clip.api.app import effective_task
    from clip.data.clip_benchmark import kind_of
    from clip.eval.results import benchmark_file, dataset_name

    jobs, seen = [], set()
    for ckpt in checkpoints:
        model_base = base if tokenizers is None else dataclasses.replace(
            base, model=dataclasses.replace(base.model, tokenizer=tokenizers[ckpt]))
        for dataset in datasets:
            out_dir = os.path.join(output, slug(os.path.splitext(os.path.basename(ckpt))[0]),
                                   slug(dataset_name(dataset.type, dataset.path)))
            cfg = job_config(model_base, dataset, out_dir)
            retrieval_set = kind_of(cfg.data.eval) == "retrieval"
            for task in tasks:
                if retrieval_set:
                    task = "retrieval"
                elif task == "retrieval":
                    continue  # retrieval needs captions: only CLIP_benchmark's retrieval sets have them here
                task = effective_task(cfg, task)
                key = (ckpt, dataset, task)
                if key not in seen:
                    seen.add(key)
                    jobs.append((ckpt, dataset, task, cfg, os.path.join(out_dir, benchmark_file(task))))
    return jobs


def gather(output: str) -> list[dict]:
    """Every CLIP_benchmark JSON under the output, sorted by model, pretrained, dataset, task."""
    records = []
    for path in sorted(glob.glob(os.path.join(output, "*", "*", "clip_benchmark_*.json"))):
        with open(path, encoding="utf-8") as f:
            records.append(json.load(f))
    return sorted(records, key=lambda r: (r["model"], r["pretrained"], r["dataset"], r["task"]))


def results_csv(records: list[dict]) -> str:
    metrics = sorted({m for r in records for m in r["metrics"]})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "pretrained", "dataset", "task", "language", *metrics])
    for r in records:
        writer.writerow([r["model"], r["pretrained"], r["dataset"], r["task"], r["language"],
                         *[r["metrics"].get(m, "") for m in metrics]])
    return buf.getvalue()


def main_metric(record: dict) -> tuple[str, float]:
    name = next((m for m in MAIN_METRICS if m in record["metrics"]), sorted(record["metrics"])[0])
    return name, record["metrics"][name]


def table(records: list[dict]) -> tuple[list[str], list[str], dict]:
    """(rows: model/pretrained, columns: dataset and metric, cells: percent)."""
    rows, columns, cells = [], [], {}
    for r in records:
        row = f"{r['model']} / {r['pretrained']}"
        name, value = main_metric(r)
        column = f"{r['dataset']} {name}"
        rows += [row] if row not in rows else []
        columns += [column] if column not in columns else []
        cells[row, column] = 100.0 * value
    return rows, columns, cells


def results_markdown(records: list[dict]) -> str:
    rows, columns, cells = table(records)
    lines = ["| model / pretrained | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"{cells[row, c]:.2f}" if (row, c) in cells else "-"
                                               for c in columns) + " |")
    return "\n".join(lines) + "\n"


def results_chart(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from launcher.safe_write import write_bytes

    rows, columns, cells = table(records)
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(columns) * max(len(rows), 1) * 0.6 + 2), 4.5))
    x = np.arange(len(columns))
    for k, row in enumerate(rows):
        ax.bar(x + k * width - 0.4 + width / 2, [cells.get((row, c), 0.0) for c in columns], width, label=row)
    ax.set_xticks(x)
    ax.set_xticklabels(columns, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("percent")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def write_tables(output: str) -> list[dict]:
    from launcher.safe_write import write_text

    records = gather(output)
    write_text(os.path.join(output, "results.csv"), results_csv(records))
    write_text(os.path.join(output, "results.md"), results_markdown(records))
    results_chart(records, os.path.join(output, "results.png"))
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clip.benchmark",
                            description="Evaluate checkpoints x datasets x tasks; one CSV, markdown table and chart.")
    parser.add_argument("--checkpoint", nargs="+", required=True, type=path("maybe_file"),
                        help="checkpoints (each carries its architecture)")
    parser.add_argument("--dataset", nargs="+", default=[], metavar="TYPE:PATH[:SPLIT]", type=text(nonempty=True),
                        help="e.g. imagenet:/data/imagenet clip_benchmark:/data/wds_cars cifar100:/data/cifar")
    parser.add_argument("--datasets-file", type=path("file"), help="a file with one TYPE:PATH[:SPLIT] per line")
    parser.add_argument("--task", nargs="+", choices=TASKS, default=["zeroshot"],
                        help="zeroshot (default), linear_probe; CLIP_benchmark retrieval sets run retrieval")
    parser.add_argument("--output", required=True, type=path("output_dir"),
                        help="directory for every result and the tables")
    parser.add_argument("--config", type=path("file"),
                        help="YAML run config for everything else (batch size, dtype, templates)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.eval_batch_size=128 (repeatable)")
    hf_tokenizer.add_argument(parser)
    return parser


@exit_on_user_error
@worker.record
def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from clip.api.app import configure_logging, evaluate_and_write, require_single_card
    from clip.config import load_config
    from clip.train.preflight import check_output_file

    worker.install()
    configure_logging()
    require_single_card(os.environ)
    for ckpt in args.checkpoint:
        if not os.path.isfile(ckpt):
            raise UserError(f"--checkpoint {ckpt!r} does not exist")
    datasets = [parse_dataset(d, "--dataset") for d in args.dataset]
    if args.datasets_file:
        datasets += read_dataset_file(args.datasets_file)
    if not datasets:
        raise UserError("no dataset: give --dataset TYPE:PATH or --datasets-file")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f"--output {args.output!r} is a file, expected a directory")
    for name in ("results.csv", "results.md", "results.png"):
        check_output_file(os.path.join(args.output, name), "--output")
    base = load_config(args.config, args.overrides + hf_tokenizer.override(args.tokenizer))
    tokenizers = None
    if base.model.tokenizer:
        tokenizers = checkpoint_tokenizers(args.checkpoint, base.model,
                                           "--tokenizer" if args.tokenizer else "model.tokenizer")
    jobs = plan(args.checkpoint, datasets, args.task, base, args.output, tokenizers)
    from tqdm import tqdm

    todo = [job for job in jobs if not os.path.isfile(job[4])]
    print(f"benchmark: {len(jobs)} evaluations, {len(jobs) - len(todo)} already written", file=sys.stderr, flush=True)
    for ckpt, dataset, task, cfg, _ in tqdm(todo, desc="benchmark", unit="eval", file=sys.stderr):
        evaluate_and_write(cfg, task, ckpt, cache_dir=os.path.join(args.output, "cache"))
    records = write_tables(args.output)
    print(results_markdown(records), end="", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
