#!/usr/bin/env bash
# Data-parallel training on N cards of this machine: N workers of `python -m clip.train` started and
# supervised by the launcher (auto backend: Ascend rank table when NPUs exist, else a CPU/GPU dynamic
# cluster). Logs go to <output_dir>/logs; the script exits with the job's exit code.
#   bash scripts/run_distribute.sh N CONFIG [key=value ...]
# Each worker is pinned to its own block of this machine's cores (--bind-cores).
# Environment: PYTHON (interpreter, default python3), LAUNCHER_OPTS (extra `launcher run` options,
# e.g. "--max-restarts 2", or "--no-bind-cores" to leave the workers unpinned), GLOG_v (MindSpore log level,
# default 3: errors only), HANG_TIMEOUT (seconds without a training step before a rank counts as hung,
# default 1800).
set -u

usage() {
    echo "usage: bash scripts/run_distribute.sh N CONFIG [key=value ...]" >&2
    exit 2
}

[ $# -ge 2 ] || usage
N=$1
CONFIG=$2
shift 2
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: N '$N': expected a positive number of workers" >&2
    usage
fi
if [ ! -f "$CONFIG" ]; then
    echo "error: CONFIG '$CONFIG': file not found" >&2
    exit 2
fi
SETS=()
for override in "$@"; do
    if [[ "$override" != *=* ]]; then
        echo "error: override '$override': expected key=value" >&2
        usage
    fi
    SETS+=(--set "$override")
done

# MindSpore logs only errors unless asked (GLOG_v=2 shows its warnings, 1 its info lines).
export GLOG_v=${GLOG_v:-3}
PYTHON=${PYTHON:-python3}
OUTPUT_DIR=$("$PYTHON" -m clip.config --config "$CONFIG" ${SETS[@]+"${SETS[@]}"} --get output_dir) || exit $?
read -r -a EXTRA <<< "${LAUNCHER_OPTS:-}"

# --no-chdir: paths in the config (data, output_dir) stay relative to where the user typed the command.
# --bind-cores: a worker's threads stay on its own cores instead of competing with the other workers' for all of
# them (LAUNCHER_OPTS come after it, so --no-bind-cores there wins).
exec "$PYTHON" -m launcher run --nproc "$N" --backend auto --log-dir "$OUTPUT_DIR/logs" --no-chdir --tee 0 \
    --bind-cores --hang-timeout "${HANG_TIMEOUT:-1800}" \
    ${EXTRA[@]+"${EXTRA[@]}"} -- "$PYTHON" -m clip.train --config "$CONFIG" ${SETS[@]+"${SETS[@]}"}
