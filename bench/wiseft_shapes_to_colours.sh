#!/usr/bin/env bash
# WiSE-FT end to end on data that needs no download, with the commands of docs/finetuning.md:
#   bash bench/wiseft_shapes_to_colours.sh [WORKDIR]
# clip_tiny trained on the built-in shapes (English captions) is the zero-shot model; it is fine-tuned on an
# image folder of the shapes' colours named in French (tests/finetune_data.py), and every mixture is evaluated
# on that folder's val split (the target) and on shapes val (the original task). Writes
# bench/results/wiseft_shapes_to_colours.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
W=${1:-/tmp/wiseft_shapes_to_colours}
export GLOG_v=3
mkdir -p "$W"
$PY -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from finetune_data import write_colour_folder; write_colour_folder(Path('$W/colours'))"
T0=$(date +%s)
$PY -m clip.train --config configs/demo_shapes.yaml --set train.max_steps=250 --set train.eval_every=0 \
    --set train.save_every=0 --set output_dir="$W/zs" --set train.resume=none > "$W/zs.log" 2>&1
T1=$(date +%s)
TEMPL='["une forme {}.", "un dessin {}."]'
$PY -m clip.train --set model.checkpoint="$W/zs/checkpoints/last.ckpt" --set data.train.type=imagefolder \
    --set data.train.path="$W/colours" --set data.train.split=train --set "data.train.templates=$TEMPL" \
    --set data.eval.type=imagefolder --set data.eval.path="$W/colours" --set data.eval.split=val \
    --set "data.eval.templates=$TEMPL" --set train.batch_size=32 --set train.max_steps=60 --set train.lr=1e-4 \
    --set train.warmup_steps=5 --set train.log_every=10 --set output_dir="$W/ft" --set train.resume=none > "$W/ft.log" 2>&1
T2=$(date +%s)
printf 'data:\n  eval: {type: imagefolder, path: %s/colours, split: val, templates: ["une forme {}.", "un dessin {}."]}\noutput_dir: %s/sweep_folder\n' "$W" "$W" > "$W/folder.yaml"
printf 'data:\n  eval: {type: shapes, split: val, num_samples: 480}\noutput_dir: %s/sweep_shapes\n' "$W" > "$W/shapes.yaml"
for target in folder shapes; do
    $PY -m clip.wiseft "$W/zs/checkpoints/last.ckpt" "$W/ft/checkpoints/last.ckpt" --alphas 0,0.25,0.5,0.75,1 \
        --eval "$W/$target.yaml" > "$W/sweep_$target.log" 2>&1
done
T3=$(date +%s)
$PY - "$W" "$((T1 - T0))" "$((T2 - T1))" "$((T3 - T2))" <<'PY'
import json, os, sys
w, *seconds = sys.argv[1:]

def table(path):
    rows = [line.split(",") for line in open(path).read().splitlines()]
    return [dict(zip(rows[0], map(float, row))) for row in rows[1:]]

result = {"target_colours_fr": table(f"{w}/sweep_folder/wiseft.csv"), "original_shapes": table(f"{w}/sweep_shapes/wiseft.csv"),
          "wall_seconds": dict(zip(("zero_shot_training", "fine_tuning", "two_sweeps"), map(int, seconds))),
          "load_avg_1m_at_end": round(os.getloadavg()[0], 1)}
json.dump(result, open("bench/results/wiseft_shapes_to_colours.json", "w"), indent=1)
print(json.dumps(result))
PY
