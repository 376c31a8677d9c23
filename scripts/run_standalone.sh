#!/usr/bin/env bash
# Single-card debug run: `python -m clip.train` in the foreground, no launcher, no communication,
# PYNATIVE mode unless an override says `train.mode=graph`.
#   bash scripts/run_standalone.sh CONFIG [key=value ...] [--device-id N]
# Environment: PYTHON (interpreter, default python3).
set -u

usage() {
    echo "usage: bash scripts/run_standalone.sh CONFIG [key=value ...] [--device-id N]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
CONFIG=$1
shift
if [ ! -f "$CONFIG" ]; then
    echo "error: CONFIG '$CONFIG': file not found" >&2
    exit 2
fi
SETS=(--set train.mode=pynative)
DEVICE_ID=
while [ $# -gt 0 ]; do
    case "$1" in
        --device-id)
            if [ $# -lt 2 ] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
                echo "error: --device-id '${2:-}': expected a device number (0, 1, ...)" >&2
                usage
            fi
            DEVICE_ID=$2
            shift 2
            ;;
        *=*)
            SETS+=(--set "$1")
            shift
            ;;
        *)
            echo "error: argument '$1': expected key=value or --device-id N" >&2
            usage
            ;;
    esac
done

# A single card: none of the launcher's variables (their names live in launcher/backends), so
# clip.train initialises no communication; only the chip, if given.
PYTHON=${PYTHON:-python3}
SINGLE_ENV=$("$PYTHON" -m launcher.backends single ${DEVICE_ID:+--device-id "$DEVICE_ID"}) || exit $?
eval "$SINGLE_ENV"
exec "$PYTHON" -m clip.train --config "$CONFIG" "${SETS[@]}"
