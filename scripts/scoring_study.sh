#!/bin/sh
# The scoring study behind the bundled model's operating point (docs/scoring.md): on the data of
# scripts/demo_model.sh (and the benchmark's MS set), every scoring of the bundled model from one
# draw of 4 reconstructions per volume: the residual of one, the residual to the mean of 4 and the
# Mahalanobis distance from 4, scaled per volume (Behrendt et al.) and raw (SCORINGS="... mhd:10"
# adds N = 10 at 2.5 times the time). The scoring, N, the protocol's threshold and the reading point
# are chosen on the validation volumes only (tumour validation volumes, the healthy validation fold)
# and stored in the card; the test volumes are reported, never used to choose. 2 CPU cores take about
# 45 min for the data (reused when present), 55 to 80 min for the tumour evaluation and 25 min for
# the MS one.
set -eu
WORK=${WORK:-benchmark}
MAEDIFF=${MAEDIFF:-maediff}
MODEL=${MODEL:-Resources/models/maediff-small-demo.json}
SCORINGS=${SCORINGS:-residual mean:4 mhd:4 mhd:4:raw}
phantoms() {  # kind count seed; a set already written is reused (generation is deterministic)
    [ -f "$WORK/data/$1/phantoms.json" ] || $MAEDIFF phantom "$1" -n "$2" --seed "$3" -o "$WORK/data/$1"
}
phantoms healthy 100 0
phantoms tumour 20 1
phantoms ms 20 2
for kind in healthy tumour; do
    $MAEDIFF prepare "$WORK/data/$kind" -o "$WORK/prepared/$kind" --workers 2
done
# The comparison on tumours, with false alarms on the 28 healthy test volumes; the choice is stored.
$MAEDIFF evaluate --model "$MODEL" --val "$WORK/prepared/tumour" --test "$WORK/prepared/tumour" \
    --healthy "$WORK/prepared/healthy" --use-splits --scoring $SCORINGS --save-threshold -o "$WORK/eval/scoring-tumour"
# The table of docs/scoring.md.
python scripts/scoring_table.py "$WORK/eval/scoring-tumour"
# Seconds per volume of a whole `maediff detect` at 1, 4 and 10 reconstructions (the sample).
$MAEDIFF bench-detect --variant "residual" "--scoring residual --threshold 0.1" \
    --variant "mhd:4" "--scoring mhd:4 --threshold 0.5" --variant "mhd:10" "--scoring mhd:10 --threshold 0.5" \
    --variant "card's" ""
# The bundled sample at the published point: what the card, the tests and the README say.
$MAEDIFF demo -o "$WORK/demo" --record
# The MS set, reported only (its lesions are too small for this model: docs/benchmark.md).
$MAEDIFF prepare "$WORK/data/ms" -o "$WORK/prepared/ms" --workers 2
$MAEDIFF evaluate --model "$MODEL" --val "$WORK/prepared/ms" --test "$WORK/prepared/ms" --use-splits \
    --scoring $SCORINGS -o "$WORK/eval/scoring-ms"
