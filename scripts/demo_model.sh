#!/bin/sh
# The recipe of the bundled demo model (Resources/models/maediff-small-demo): `make demo-model`.
# Phantoms, their model-space caches and the run go under WORK (ignored by git); 2 CPU cores take
# about 40 min to prepare the data, 30 min to train and 20 min to choose the threshold.
set -eu
WORK=${WORK:-benchmark}
MAEDIFF=${MAEDIFF:-maediff}
$MAEDIFF phantom healthy -n 100 --seed 0 -o "$WORK/data/healthy"
$MAEDIFF phantom tumour -n 20 --seed 1 -o "$WORK/data/tumour"
$MAEDIFF prepare "$WORK/data/healthy" -o "$WORK/prepared/healthy" --workers 2
$MAEDIFF prepare "$WORK/data/tumour" -o "$WORK/prepared/tumour" --workers 2
$MAEDIFF train --data "$WORK/prepared/healthy" --config maediff-small -o "$WORK/runs/demo" \
    --batch-size 16 --lr 2e-4 --slices-per-volume 8 --max-minutes 30 --seed 0 --device cpu
$MAEDIFF evaluate --model "$WORK/runs/demo/best.json" --val "$WORK/prepared/tumour" \
    --test "$WORK/prepared/tumour" --use-splits --save-threshold -o "$WORK/eval/demo"
$MAEDIFF publish "$WORK/runs/demo/best.json" -o Resources/models/maediff-small-demo --synthetic-data \
    --data "100 healthy T2 phantoms (maediff phantom healthy -n 100 --seed 0)" --recipe scripts/demo_model.sh \
    --description "A CPU-sized MAEDiff (maediff-small) for the demo and the tests: it shows the whole product working, quickly, with no download."
