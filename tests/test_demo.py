"""The README demo learns: the tiny CLIP on synthetic shapes, 2 CPU workers through scripts/run_distribute.sh,
reaches at least 60% zero-shot top-1 over at least 20 classes (chance under 5%)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clusters import clean_environ

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_config_reaches_60_percent_zero_shot(tmp_path):
    out = tmp_path / "demo"
    env = clean_environ()
    env.update(PYTHON=sys.executable, GLOG_v="3", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    proc = subprocess.run(["bash", "scripts/run_distribute.sh", "2", "configs/demo_shapes.yaml", f"output_dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = re.search(r"\[rank 0\] final zero-shot top-1 ([\d.]+)% top-5 [\d.]+% on (\d+) images, (\d+) classes",
                      proc.stdout)
    assert final, proc.stdout[-3000:]
    top1, images, classes = float(final.group(1)), int(final.group(2)), int(final.group(3))
    assert classes >= 20 and images >= 20 * classes
    assert top1 >= 60.0, f"demo reached only {top1:.2f}% zero-shot top-1"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_top1" in r]
    assert evals[-1]["eval_top1"] == pytest.approx(top1, abs=0.01)
    assert evals[0]["eval_top1"] < top1  # it learned during the run, not before it
    assert (out / "metrics.png").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "logs" / "worker_1.log").is_file()
