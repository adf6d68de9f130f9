#!/usr/bin/env bash
# GPU recipe, step 2 (on the GPU machine, one device-tool call each, at most 10 minutes):
#
#   run(command="scripts/gpu/train.sh maediff-small 25 --batch-size 64", carry=[".gpu/data.npz", ".gpu/wheels"])
#
# Trains CONFIG on .gpu/data.npz in .gpu/run for a budget of MINUTES in all (--max-minutes, over
# which a --schedule cosine decays), each call stopping at the first epoch end past CALL_MINUTES
# (default 8.5) of its own. The next call, with the same arguments, resumes the run exactly (an ignored
# folder stays there while the machine is warm, 30 s after a call: call again at once) until the
# budget is spent. Any further arguments go to `maediff train`.
# What comes back in $OUT: the best model with float16 weights (best.safetensors, under 16 MiB for
# up to 8 M parameters), its card, the metrics and the last checkpoint's card.
set -euo pipefail
config=${1:?usage: scripts/gpu/train.sh CONFIG MINUTES [maediff train options]}
minutes=${2:?usage: scripts/gpu/train.sh CONFIG MINUTES [maediff train options]}
shift 2
OUT=${OUT:?OUT must name the folder whose files come back}
if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
"$PYTHON" -m maediff_core.cli device
"$PYTHON" -m maediff_core.cli train --data .gpu/data.npz --config "$config" -o .gpu/run --max-minutes "$minutes" \
  --stop-after-minutes "${CALL_MINUTES:-8.5}" "$@"
"$PYTHON" -m maediff_core.cli publish .gpu/run/best.json -o "$OUT/best" --half --no-onnx \
  --description "GPU run of $config"  # finish.sh exports the release's ONNX, where onnx is installed
cp .gpu/run/metrics.csv .gpu/run/last.json "$OUT/"
