#!/usr/bin/env bash
# GPU recipe, step 2 (on the GPU machine, one device-tool call each, at most 10 minutes):
#
#   run(command="scripts/gpu/train.sh maediff-small 8.5 --batch-size 64", carry=[".gpu/data.npz", ".gpu/wheels"])
#
# Trains CONFIG on .gpu/data.npz until MINUTES have passed (at the next epoch end), in .gpu/run. A
# later call on the same machine resumes that run exactly (an ignored folder stays there while the
# machine is warm, 30 s after a call: call again at once). Any further arguments go to `maediff train`.
# What comes back in $OUT: the best model with float16 weights (best.safetensors, under 16 MiB for
# up to 8 M parameters), its card, the metrics and the last checkpoint's card.
set -euo pipefail
config=${1:?usage: scripts/gpu/train.sh CONFIG [MINUTES] [maediff train options]}
minutes=${2:-8.5}
shift $(( $# < 2 ? $# : 2 ))
OUT=${OUT:?OUT must name the folder whose files come back}
if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
"$PYTHON" -m maediff_core.cli device
"$PYTHON" -m maediff_core.cli train --data .gpu/data.npz --config "$config" -o .gpu/run --max-minutes "$minutes" "$@"
"$PYTHON" -m maediff_core.cli publish .gpu/run/best.json -o "$OUT/best" --half --description "GPU run of $config"
cp .gpu/run/metrics.csv .gpu/run/last.json "$OUT/"
