"""False alarms on normal brains, and an operating point for reading.

The protocol's threshold maximises Dice on lesion volumes: right for a paper's table, and blind to
what a reader sees on a normal brain. These count the lesion candidates a normal brain gets, and
choose a second operating point on healthy validation volumes: the lowest threshold at or above the
protocol's, for each smallest lesion size, at which they get at most a target number of candidates
on average; of those, the one with the best Dice on the lesion validation volumes. Never below the
protocol's threshold: low enough, the whole brain is one candidate, which meets any target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from .metrics import dice, mean_std
from .postprocess import PostprocessConfig, lesion_labels

READING_TARGET = 1.0  # lesion candidates per normal brain, on average, at the reading point
# Smallest lesion, in model-space voxels of 2 mm (0.064, 0.216 and 0.512 mL): the protocol's, and two
# that drop the small candidates that CSF borders and cortex give.
READING_SIZES = (8, 27, 64)
CASE_TOP_FRACTION = 0.001  # a volume's score: the mean of its top 0.1 % of brain voxels
BISECTIONS = 20


def candidate_counts(scored, threshold: float, min_voxels: int) -> list[tuple[int, int]]:
    """Per volume: the lesion candidates at ``threshold`` and their voxels in all."""
    config = PostprocessConfig(min_component_voxels=min_voxels)
    out = []
    for s in scored:
        labels = lesion_labels(s.score, threshold, config)
        out.append((int(labels.max()), int(np.count_nonzero(labels))))
    return out


def false_alarms(healthy, test, threshold: float, min_voxels: int, voxel_ml: float) -> dict:
    """What a reader sees where there is nothing to see: candidates per healthy volume (mean, max)
    and their mL, and per lesion volume the candidates that touch no lesion."""
    result = {"threshold": threshold, "min_voxels": min_voxels}
    if healthy:
        counts = candidate_counts(healthy, threshold, min_voxels)
        numbers, ml = [c for c, _ in counts], [v * voxel_ml for _, v in counts]
        result |= {"healthy_candidates_mean": mean_std(numbers)[0], "healthy_candidates_max": max(numbers),
                   "healthy_ml_mean": mean_std(ml)[0], "healthy_ml_max": max(ml)}
    config = PostprocessConfig(min_component_voxels=min_voxels)
    stray = []
    for s in test:
        labels = lesion_labels(s.score, threshold, config)
        touched = set(np.unique(labels[s.truth.astype(bool)]).tolist()) - {0}
        stray.append(int(labels.max()) - len(touched))
    result["lesion_volume_false_candidates_mean"] = mean_std(stray)[0]
    return result


def case_score(s) -> float:
    """A volume's score for telling lesion volumes from normal ones: its top brain voxels' mean."""
    values = np.sort(s.score[s.mask.astype(bool)])
    top = max(1, int(round(CASE_TOP_FRACTION * values.size)))
    return float(values[-top:].mean()) if values.size else 0.0


def case_auroc(test, healthy) -> float:
    """The area under the ROC of lesion volumes against healthy ones, by ``case_score``."""
    scores = [case_score(s) for s in [*test, *healthy]]
    return float(roc_auc_score([1] * len(test) + [0] * len(healthy), scores))


def reading_threshold(healthy_val, min_voxels: int, floor: float, target: float = READING_TARGET) -> float:
    """A low threshold, from ``floor`` (the protocol's) up, at which the healthy validation volumes hold
    at most ``target`` candidates of ``min_voxels`` or more on average: bisection of [floor, max]
    (components may split as it rises, so the count is nearly but not strictly monotone)."""
    low, high = floor, max(floor, max(float(s.score.max()) for s in healthy_val))

    def mean_count(threshold: float) -> float:
        return float(np.mean([c for c, _ in candidate_counts(healthy_val, threshold, min_voxels)]))

    if mean_count(low) <= target:
        return low
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        if mean_count(middle) <= target:
            high = middle
        else:
            low = middle
    return high


def choose_reading(val, healthy_val, both_empty_dice: float, floor: float, target: float = READING_TARGET,
                   sizes: Sequence[int] = READING_SIZES) -> dict:
    """The reading operating point, chosen on validation volumes only: for each smallest lesion
    size, its reading threshold (at or above ``floor``, the protocol's) on the healthy ones; of
    those, the best pooled Dice on the lesion ones."""
    truth = np.concatenate([s.truth.ravel() for s in val]).astype(bool)
    options = []
    for size in sizes:
        threshold = reading_threshold(healthy_val, size, floor, target)
        config = PostprocessConfig(min_component_voxels=size)
        found = np.concatenate([(lesion_labels(s.score, threshold, config) > 0).ravel() for s in val])
        counts = [c for c, _ in candidate_counts(healthy_val, threshold, size)]
        options.append({"threshold": threshold, "min_voxels": size,
                        "val_dice_pooled": dice(found, truth, both_empty_dice),
                        "healthy_val_candidates_mean": float(np.mean(counts))})
    best = max(options, key=lambda o: (np.nan_to_num(o["val_dice_pooled"]), -o["min_voxels"]))
    return {**best, "target": f"at most {target:g} lesion candidate(s) per healthy validation volume on average",
            "options": options}
