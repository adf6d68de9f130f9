#!/bin/sh
# The training-recipe study behind the small configurations' defaults
# (docs/training-per-cpu-minute.md): maediff-small trained for MINUTES on the phantoms of scripts/demo_model.sh, one
# recipe at a time, the same data, seed and budget, each evaluated on the tumour validation volumes
# (the Dice a recipe is chosen by), a few test volumes and healthy volumes (l1). Validation L1 against
# minutes is each run's metrics.csv. Runs one after another: each uses both cores.
#
#   WORK=benchmark MINUTES=15 scripts/recipe_study.sh [NAME ...]     (default: every recipe)
set -eu
WORK=${WORK:-benchmark}
MAEDIFF=${MAEDIFF:-maediff}
MINUTES=${MINUTES:-15}
HEALTHY="$WORK/prepared/healthy"
TUMOUR="$WORK/prepared/tumour"
OUT="$WORK/recipes"

recipe() {  # name: the options of maediff train that make the recipe
    case "$1" in
        constant) echo "--lr 2e-4 --ema 0 --schedule constant" ;;  # the bundled model's recipe until now
        ema) echo "--lr 2e-4 --ema 0.999 --schedule constant" ;;
        cosine-2e-4) echo "--lr 2e-4 --ema 0.999 --schedule cosine" ;;
        cosine-5e-4) echo "--lr 5e-4 --ema 0.999 --schedule cosine" ;;
        # twice the steps at the same cost a sample, for 7 epochs: the samples the batch-16 runs saw in 15 minutes
        batch-8) echo "--lr 2e-4 --ema 0.999 --schedule constant --batch-size 8 --epochs 7" ;;
        cddpm) echo "--lr 2e-4 --ema 0.999 --schedule constant" ;;  # cddpm-small with the best of the above
        *) echo "unknown recipe $1" >&2; exit 2 ;;
    esac
}

for name in ${*:-constant ema cosine-5e-4 cosine-2e-4 batch-8 cddpm}; do
    options=$(recipe "$name")
    config=maediff-small
    [ "$name" = cddpm ] && config=cddpm-small
    # shellcheck disable=SC2086
    $MAEDIFF train --data "$HEALTHY" --config $config -o "$OUT/$name" --batch-size 16 --slices-per-volume 8 \
        --max-minutes "$MINUTES" --seed 0 --device cpu $options
    point="--stride 48 --t-test 150"  # the bundled model's operating point
    [ "$config" = cddpm-small ] && point=""  # whole slices at its own levels, 250, 500, 750
    # shellcheck disable=SC2086
    [ -f "$OUT/$name/eval/metrics.json" ] || $MAEDIFF evaluate --model "$OUT/$name/best.json" --val "$TUMOUR" \
        --test "$TUMOUR" --healthy "$HEALTHY" --use-splits --max-volumes 4 $point -o "$OUT/$name/eval"
done
