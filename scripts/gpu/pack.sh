#!/usr/bin/env bash
# GPU recipe, step 1 (here, before a device is asked for): everything a bare GPU machine needs to
# train, under .gpu/ (ignored; the device tool carries it): the healthy training cohort as one pack and
# the wheels the machine lacks. It has PyTorch, numpy, safetensors, tqdm and TensorBoard; it lacks
# MONAI (pure Python, carried) and SimpleITK, which the training path does not import.
#
#   scripts/gpu/pack.sh PREPARED_HEALTHY_FOLDER        (a `maediff prepare` output)
#
# Then, with the device tool: scripts/gpu/train.sh (step 2), and here scripts/gpu/finish.sh (step 3).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
prepared=${1:?usage: scripts/gpu/pack.sh PREPARED_HEALTHY_FOLDER}
mkdir -p .gpu/wheels
"$PYTHON" -m maediff_core.cli pack "$prepared" -o .gpu/data.npz --splits train
if [ -z "${SKIP_WHEELS:-}" ]; then
  monai=$("$PYTHON" -c "import monai; print(monai.__version__)")
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    -d .gpu/wheels "monai==$monai"
fi
# The tree that travels may hold 64 MiB; the repository itself takes about 25.
size=$(du -sm .gpu | cut -f1)
echo "packed .gpu: ${size} MB (carry .gpu/data.npz and .gpu/wheels)"
if [ "$size" -gt 36 ]; then echo "too large to travel beside the repository" >&2; exit 1; fi
