#!/usr/bin/env bash
# Zero-shot (or retrieval) evaluation of a checkpoint with a run config, on one card:
#   bash scripts/run_eval.sh CONFIG [CKPT] [more clip.eval arguments, e.g. --task retrieval --set k=v]
# Results: <output_dir>/eval.json (retrieval.json for --task retrieval). Many cards: give
# `python -m clip.eval` to the launcher instead (rank 0 evaluates, or every rank with --sharded).
# Environment: PYTHON (interpreter, default python3).
set -u

if [ $# -lt 1 ]; then
    echo "usage: bash scripts/run_eval.sh CONFIG [CKPT] [clip.eval arguments ...]" >&2
    exit 2
fi
CONFIG=$1
shift
if [ ! -f "$CONFIG" ]; then
    echo "error: CONFIG '$CONFIG': file not found" >&2
    exit 2
fi
ARGS=(--config "$CONFIG")
if [ $# -ge 1 ] && [ "${1#--}" = "$1" ]; then
    if [ ! -f "$1" ]; then
        echo "error: CKPT '$1': file not found" >&2
        exit 2
    fi
    ARGS+=(--checkpoint "$1")
    shift
fi
export GLOG_v=${GLOG_v:-3}  # MindSpore logs errors only unless asked (GLOG_v=2: warnings)
exec "${PYTHON:-python3}" -m clip.eval "${ARGS[@]}" "$@"
