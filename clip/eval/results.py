"""Results in LAION's CLIP_benchmark JSON format, beside our own eval.json / retrieval.json, so that a table can
be built from our runs and CLIP_benchmark's with either tool.

CLIP_benchmark writes one JSON per (dataset, model, pretrained, task) with the keys `dataset`, `model`,
`pretrained`, `task`, `metrics`, `language` and metric values as fractions; our own files keep percent.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

# Our task name -> CLIP_benchmark's.
BENCHMARK_TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
                   "linear_probe": "linear_probe"}
# Dataset type -> the name CLIP_benchmark gives the same data (clip_benchmark sets are named by folder).
DATASET_NAMES = {"cifar100": "cifar100", "imagenet": "imagenet1k", "flickr8k": "flickr8k"}
LANGUAGE = "en"


def benchmark_file(task: str) -> str:
    """The file name under output_dir: one per task, as CLIP_benchmark's default name ends in the task."""
    return f"clip_benchmark_{BENCHMARK_TASKS[task]}.json"


def dataset_name(data_type: str, path: Optional[str]) -> str:
    """CLIP_benchmark's name for a dataset: `wds/<name>` for its WebDataset sets (the folder name, less the
    `wds_` prefix its published copies carry), the registry name for the sets it knows, else our type."""
    if data_type == "clip_benchmark" and path:
        base = os.path.basename(os.path.normpath(path))
        return "wds/" + (base[4:] if base.startswith("wds_") else base)
    if data_type == "imagefolder" and path:
        return os.path.basename(os.path.normpath(path))
    return DATASET_NAMES.get(data_type, data_type)


def benchmark_metrics(result: dict, task: str, ks: Sequence[int] = ()) -> dict:
    """CLIP_benchmark's metric names and fractions from one of our result dicts (percent)."""
    if task == "retrieval":
        out = {}
        for k in ks:
            out[f"image_retrieval_recall@{k}"] = result[f"text_to_image_R@{k}"] / 100.0
            out[f"text_retrieval_recall@{k}"] = result[f"image_to_text_R@{k}"] / 100.0
        return out
    if task == "linear_probe":
        return {"lp_acc1": result["lp_acc1"] / 100.0, "lp_acc5": result["lp_acc5"] / 100.0,
                "lp_mean_per_class_recall": result["lp_mean_per_class_recall"] / 100.0}
    if "mean_average_precision" in result:
        return {"mean_average_precision": result["mean_average_precision"] / 100.0}
    return {"acc1": result["top1"] / 100.0, "acc5": result["top5"] / 100.0,
            "mean_per_class_recall": result["mean_per_class_recall"] / 100.0}


def benchmark_record(result: dict, task: str, dataset: str, model: str, pretrained: str,
                     ks: Sequence[int] = ()) -> dict:
    """The whole CLIP_benchmark JSON object for one evaluation."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": BENCHMARK_TASKS[task],
            "metrics": benchmark_metrics(result, task, ks), "language": LANGUAGE}
