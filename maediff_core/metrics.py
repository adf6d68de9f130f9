"""Metrics of the evaluation protocol (REFERENCE.md, "Evaluation protocol").

Dice and AUPRC are computed per volume and averaged; the decision threshold is searched on the
unhealthy validation set by maximising Dice over all its voxels together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import average_precision_score


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|); two empty masks agree perfectly (1.0)."""
    a, b = prediction.astype(bool), truth.astype(bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def auprc(score: np.ndarray, truth: np.ndarray) -> float:
    """Average precision of the voxel scores against the voxel truth of one volume."""
    labels = truth.astype(bool).ravel()
    if not labels.any():
        return float("nan")  # undefined without positives; such volumes are left out of means
    return float(average_precision_score(labels, score.astype(np.float64).ravel()))


def l1_error(image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute reconstruction error inside the brain (healthy volumes)."""
    inside = mask.astype(bool)
    return float(np.abs(image[inside] - reconstruction[inside]).mean())


def search_threshold(scores: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                     binarise: Callable[[np.ndarray, float], np.ndarray] | None = None,
                     steps: int = 10) -> tuple[float, float]:
    """Threshold maximising Dice over all voxels of the given volumes together.

    The reference bisects [0, max] for 10 steps; here each step evaluates the quarter points of the
    current interval and keeps the half around the better one (a bracketing search, Dice being
    unimodal in the threshold in practice). ``binarise`` turns a score volume and threshold into
    a mask (default: score > threshold); the protocol passes the connected-component filter.
    Returns (threshold, dice at that threshold).
    """
    binarise = binarise or (lambda s, t: s > t)
    truth_total = sum(int(t.astype(bool).sum()) for t in truths)

    def pooled_dice(threshold: float) -> float:
        overlap, predicted = 0, 0
        for score, truth in zip(scores, truths):
            mask = binarise(score, threshold).astype(bool)
            overlap += int(np.logical_and(mask, truth.astype(bool)).sum())
            predicted += int(mask.sum())
        total = predicted + truth_total
        return 2.0 * overlap / total if total else 1.0

    low, high = 0.0, float(max(s.max() for s in scores))
    cache: dict[float, float] = {}

    def value(t: float) -> float:
        if t not in cache:
            cache[t] = pooled_dice(t)
        return cache[t]

    for _ in range(steps):
        quarter = (high - low) / 4.0
        left, right = low + quarter, high - quarter
        if value(left) >= value(right):
            high = (low + high) / 2.0
        else:
            low = (low + high) / 2.0
    best = max(cache, key=cache.get)
    return best, cache[best]


def fpr_thresholds(healthy_scores: Sequence[np.ndarray], healthy_masks: Sequence[np.ndarray],
                   rates: Sequence[float] = (0.01, 0.05, 0.10)) -> dict[float, float]:
    """Thresholds at which the given fraction of healthy brain voxels is flagged."""
    values = np.concatenate([s[m.astype(bool)] for s, m in zip(healthy_scores, healthy_masks)])
    return {rate: float(np.quantile(values, 1.0 - rate)) for rate in rates}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = np.array([v for v in values if np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std())
