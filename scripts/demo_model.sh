#!/bin/sh
# The recipe of the bundled demo model (Resources/models/maediff-small-demo): `make demo-model`.
# Phantoms, their model-space caches and the run go under WORK (ignored by git); 2 CPU cores take
# about 35 min to prepare the data, 20 min to train and 10 min to choose the threshold. The run is
# also `maediff benchmark`'s maediff-small run: same data, settings and budget (BenchmarkConfig).
set -eu
WORK=${WORK:-benchmark}
MAEDIFF=${MAEDIFF:-maediff}
phantoms() {  # kind count seed; a set already written is reused (generation is deterministic)
    [ -f "$WORK/data/$1/phantoms.json" ] || $MAEDIFF phantom "$1" -n "$2" --seed "$3" -o "$WORK/data/$1"
}
phantoms healthy 100 0
phantoms tumour 20 1
$MAEDIFF prepare "$WORK/data/healthy" -o "$WORK/prepared/healthy" --workers 2
$MAEDIFF prepare "$WORK/data/tumour" -o "$WORK/prepared/tumour" --workers 2
RUN="$WORK/runs/maediff-small"
$MAEDIFF train --data "$WORK/prepared/healthy" --config maediff-small -o "$RUN" \
    --batch-size 16 --lr 2e-4 --slices-per-volume 8 --max-minutes 20 --seed 0 --device cpu
# The threshold comes from the 4 validation volumes; 6 test volumes give a first Dice.
$MAEDIFF evaluate --model "$RUN/best.json" --val "$WORK/prepared/tumour" --test "$WORK/prepared/tumour" \
    --use-splits --max-volumes 6 --save-threshold -o "$WORK/eval/demo"
$MAEDIFF publish "$RUN/best.json" -o Resources/models/maediff-small-demo --synthetic-data \
    --data "100 healthy T2 phantoms (maediff phantom healthy -n 100 --seed 0)" --recipe scripts/demo_model.sh \
    --description "A CPU-sized MAEDiff (maediff-small) trained for 20 minutes on 2 CPU cores, for the demo and the tests: it runs the whole product with no download, but it is far from converged (blurred reconstructions) and does not beat a plain intensity threshold; see the evaluation in the README before trusting its lesions."
