#!/bin/sh
# The recipe of the bundled demo model (Resources/models/maediff-small-demo): `make demo-model`.
# Phantoms, their model-space caches and the run go under WORK (ignored by git); 2 CPU cores take
# about 35 min to prepare the data, 100 min to train and 80 min to choose the noise level, the
# threshold and the stride. The training settings are `maediff benchmark`'s (BenchmarkConfig) at 100 minutes
# instead of 20; the bundled run resumed the benchmark's 20-minute maediff-small run (resuming is exact).
# It predates the EMA of the small configurations' recipe (README, "Training per CPU-minute"): --ema 0.
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
RUN="$WORK/runs/maediff-small-demo"
$MAEDIFF train --data "$WORK/prepared/healthy" --config maediff-small -o "$RUN" \
    --batch-size 16 --lr 2e-4 --slices-per-volume 8 --ema 0 --max-minutes 100 --seed 0 --device cpu
# The noise level comes from the 4 tumour validation volumes (the paper's t_test 500 among the
# candidates; choosing it is our protocol's, the reference keeps it fixed), then the threshold from the
# same volumes with the reference protocol; the 16 test volumes score them (the first 8 in the card).
$MAEDIFF evaluate --model "$RUN/best.json" --val "$WORK/prepared/tumour" --test "$WORK/prepared/tumour" \
    --use-splits --max-volumes 8 --t-test 100 150 250 500 --protocol ours --save-threshold -o "$WORK/eval/demo-t-test"
$MAEDIFF evaluate --model "$RUN/best.json" --val "$WORK/prepared/tumour" --test "$WORK/prepared/tumour" \
    --use-splits --save-threshold -o "$WORK/eval/demo"
# The operating point: stride 48 (4 patch positions per slice instead of 16) reconstructs 3.4x faster on
# 2 cores, and the validation volumes prefer it (pooled Dice 24.3 % against 23.7 %); on the 16 test
# volumes it scores 0.8 Dice and 1.6 AUPRC points below stride 16 (README, "The bundled model").
$MAEDIFF evaluate --model "$RUN/best.json" --val "$WORK/prepared/tumour" --test "$WORK/prepared/tumour" \
    --use-splits --stride 48 --save-threshold -o "$WORK/eval/demo-stride48"
$MAEDIFF publish "$RUN/best.json" -o Resources/models/maediff-small-demo --synthetic-data \
    --data "100 healthy T2 phantoms (maediff phantom healthy -n 100 --seed 0)" --recipe scripts/demo_model.sh \
    --description "A CPU-sized MAEDiff (maediff-small) trained for 100 minutes on 2 CPU cores, for the demo and the tests: it runs the whole product with no download. Its noise level (t_test 150 instead of the paper's 500: a model this far from converged reconstructs anatomy only at lower noise) was chosen on 4 phantom tumour validation volumes, and its threshold on the same volumes with the reference evaluation protocol, at patch stride 48 (4 positions per slice, reconstructing 3.4x faster than the paper's 16, at which the validation Dice is no higher); on 8 phantom tumour test volumes it scores Dice 38.3 % and AUPRC 37.8 % (reference protocol; 39.0 % and 38.8 % at stride 16), where a plain intensity threshold scores 32.4 % and 23.8 %. Its reconstructions are still blurred; see the evaluation in the README."
