"""Metrics of the evaluation protocol (docs/reference.md, "Evaluation protocol").

Each function states the reference's definition (``src/utils/utils_eval.py`` of the protocol's
authors) where a choice exists, so that numbers compare with the papers' tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from sklearn.metrics import average_precision_score, roc_curve


def dice(prediction: np.ndarray, truth: np.ndarray, both_empty: float = float("nan")) -> float:
    """2|A and B| / (|A| + |B|). Undefined when both masks are empty: the reference gets NaN (0 / 0)
    and leaves such volumes out of its means."""
    a, b = prediction.astype(bool), truth.astype(bool)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return both_empty
    return 2.0 * int(np.count_nonzero(a & b)) / total


def auprc(score: np.ndarray, truth: np.ndarray, no_lesion: float = 0.0) -> float:
    """Average precision of the voxel scores of one volume against its voxel truth. Without lesion
    voxels it is undefined; scikit-learn (hence the reference) returns 0.0 with a warning."""
    labels = truth.astype(bool).ravel()
    if not labels.any():
        return no_lesion
    return float(average_precision_score(labels, score.astype(np.float64).ravel()))


def l1_error(image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute reconstruction error over the whole volume (the reference), or inside ``mask``."""
    difference = np.abs(image.astype(np.float64) - reconstruction.astype(np.float64))
    return float(difference.mean() if mask is None else difference[mask.astype(bool)].mean())


def histogram_kl(image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray, bins: int = 64) -> float:
    """KL(P || Q) in nats between the intensity histograms of the input (P) and its reconstruction (Q)
    inside the brain, on ``bins`` bins of 0..1; empty bins get one pseudo-count so that Q > 0. How far
    a reconstruction's contrast is from its input's, as in the cDDPM paper's domain experiment."""
    inside = mask.astype(bool)
    p, _ = np.histogram(image[inside], bins=bins, range=(0.0, 1.0))
    q, _ = np.histogram(reconstruction[inside], bins=bins, range=(0.0, 1.0))
    p, q = (p + 1.0) / (p.sum() + bins), (q + 1.0) / (q.sum() + bins)
    return float(np.sum(p * np.log(p / q)))


def bisect_threshold(dice_at: Callable[[float], float], maximum: float, steps: int = 10) -> tuple[float, float]:
    """The reference's threshold search (``find_best_val``): 10 halvings of [0, max], each testing the
    quarter points of the current interval and keeping the half around the better one (the lower on a
    tie). The answer is the best tested point, the latest of equal values (a running best updated
    with ``>=`` from 0), and threshold 0 if no point beats Dice 0. A NaN Dice loses every comparison.
    Returns (threshold, its Dice)."""
    low, high = 0.0, float(maximum)
    best, best_dice = 0.0, 0.0
    for _ in range(steps):
        if low == high:  # an all-zero map: the reference searches [0, 1]
            high = 1.0
        q_low, q_high = low + (high - low) * 0.25, low + (high - low) * 0.75
        d_low, d_high = dice_at(q_low), dice_at(q_high)
        centre = low + (high - low) * 0.5
        if d_low >= d_high:
            if d_low >= best_dice:
                best, best_dice = q_low, d_low
            high = centre
        else:
            if d_high >= best_dice:
                best, best_dice = q_high, d_high
            low = centre
    return best, best_dice


def roc_fpr_thresholds(healthy_scores: Sequence[np.ndarray],
                       rates: Sequence[float] = (0.01, 0.05, 0.10)) -> dict[float, float]:
    """The reference's healthy operating points: on all voxels of the healthy validation volumes,
    the first ROC threshold (scikit-learn's ``roc_curve``) whose false-positive rate exceeds each rate."""
    values = np.concatenate([s.ravel() for s in healthy_scores])
    with warnings.catch_warnings():  # no positives: the true-positive rates are undefined, and unused
        warnings.simplefilter("ignore")
        fpr, _, thresholds = roc_curve(np.zeros(values.size, dtype=int), values, pos_label=1)
    return {rate: float(thresholds[np.argmax(fpr > rate)]) for rate in rates}


def brain_fpr_thresholds(healthy_scores: Sequence[np.ndarray], healthy_masks: Sequence[np.ndarray],
                         rates: Sequence[float] = (0.01, 0.05, 0.10)) -> dict[float, float]:
    """Thresholds at which the given fraction of healthy brain voxels is flagged (ours: quantiles)."""
    values = np.concatenate([s[m.astype(bool)] for s, m in zip(healthy_scores, healthy_masks, strict=True)])
    return {rate: float(np.quantile(values, 1.0 - rate)) for rate in rates}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of the finite values, as ``np.nanmean``/``nanstd``."""
    finite = np.array([v for v in values if np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std())


def mask_agreement(mask: sitk.Image, truth: sitk.Image) -> dict[str, float]:
    """A brain mask against the true brain on the same grid: Dice, the symmetric mean and 95th
    percentile distance (mm) between their surfaces, and the mL of non-brain inside the mask and of
    brain outside it."""
    a, b = (sitk.Cast(m > 0, sitk.sitkUInt8) for m in (mask, truth))
    surfaces = [sitk.LabelContour(m) for m in (a, b)]
    distances = []
    for surface, other in ((surfaces[0], surfaces[1]), (surfaces[1], surfaces[0])):
        # from each surface voxel of one mask to the nearest surface voxel of the other
        distance = sitk.Abs(sitk.SignedMaurerDistanceMap(other, insideIsPositive=False, squaredDistance=False,
                                                         useImageSpacing=True))
        distances.append(sitk.GetArrayViewFromImage(distance)[sitk.GetArrayViewFromImage(surface) > 0])
    both = np.concatenate(distances)
    va, vb = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return {"dice": dice(va, vb), "mean_surface_mm": float(both.mean()),
            "p95_surface_mm": float(np.percentile(both, 95)),
            "extra_ml": float(np.count_nonzero(va & ~vb) * ml), "missing_ml": float(np.count_nonzero(vb & ~va) * ml)}
