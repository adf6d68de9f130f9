#!/usr/bin/env bash
# GPU recipe, step 3 (here, after the last device call): the fetched model into runs/gpu, its
# noise level and threshold chosen on the lesion validation volumes (CPU), and the release written.
#
#   scripts/gpu/finish.sh FETCHED_FOLDER PREPARED_LESION_FOLDER DEST_STEM "description" [--synthetic-data]
#
# FETCHED_FOLDER is where the device tool put the last call's files (its files_at).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
fetched=${1:?usage: scripts/gpu/finish.sh FETCHED PREPARED_LESIONS DEST_STEM DESCRIPTION [--synthetic-data]}
lesions=${2:?}; dest=${3:?}; description=${4:?}
shift 4
run=${RUN:-runs/gpu}
mkdir -p "$run"
for name in best.json best.safetensors metrics.csv last.json; do
  install -m 644 "$fetched/$name" "$run/$name"  # the fetched files are read-only
done
"$PYTHON" -m maediff_core.cli evaluate --model "$run/best.json" --val "$lesions" --test "$lesions" --use-splits \
  --t-test ${T_TEST:-100 150 250} --save-threshold -o "$run/eval"
"$PYTHON" -m maediff_core.cli publish "$run/best.json" -o "$dest" --half --description "$description" "$@"
