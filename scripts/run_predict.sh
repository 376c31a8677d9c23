#!/usr/bin/env bash
# Label probabilities for images with a checkpoint:
#   bash scripts/run_predict.sh CKPT IMAGE LABELS [more clip.predict arguments, e.g. --top-k 3 --json]
# IMAGE is a file or a directory of images; LABELS is comma-separated ("cat,dog,bird").
# Environment: PYTHON (interpreter, default python3).
set -u

if [ $# -lt 3 ]; then
    echo "usage: bash scripts/run_predict.sh CKPT IMAGE LABELS [clip.predict arguments ...]" >&2
    exit 2
fi
CKPT=$1
IMAGE=$2
LABELS=$3
shift 3
export GLOG_v=${GLOG_v:-3}  # MindSpore logs errors only unless asked (GLOG_v=2: warnings)
exec "${PYTHON:-python3}" -m clip.predict --checkpoint "$CKPT" --image "$IMAGE" --labels "$LABELS" "$@"
