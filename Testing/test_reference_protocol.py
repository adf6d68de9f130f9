"""The reference protocol against an independent restatement of the protocol authors' steps
(``src/utils/utils_eval.py`` of patched-Diffusion-Models-UAD, as documented in docs/reference.md): scipy's
erosion, median and labelling instead of SimpleITK, the recursive search, and arrays (H, W, D) with
the axial slices last, as the reference holds them."""

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.ndimage as ndi
from sklearn.metrics import average_precision_score, f1_score, roc_curve

from maediff_core.cache import PreparedCase
from maediff_core.evaluate import PROTOCOLS, best_threshold, evaluate, score_cases
from maediff_core.postprocess import PostprocessConfig

REFERENCE = PROTOCOLS["reference"]


def ref_score(residual_hwd: np.ndarray, mask_hwd: np.ndarray) -> np.ndarray:
    """Residual x brain mask eroded per axial slice (2-D cross, shape[1] // 25 times), then a 3-D
    median of size 5 (scipy's default border: reflect), not masked again."""
    volume = residual_hwd.astype(np.float32).copy()
    cross = ndi.generate_binary_structure(2, 1)
    for s in range(volume.shape[2]):
        eroded = ndi.binary_erosion(mask_hwd[:, :, s], structure=cross, iterations=volume.shape[1] // 25)
        volume[:, :, s] = eroded * volume[:, :, s]
    return ndi.median_filter(volume, (5, 5, 5))


def ref_dice(p: np.ndarray, g: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(2 * np.sum(p.ravel() * g.ravel()) / (np.sum(p.ravel()) + np.sum(g.ravel())))


def ref_find_best_val(x, y, val_range, max_steps=10, step=0, max_val=0, max_point=0, visited=None):
    """The recursive bisection of the reference, recording every tested quarter point."""
    if step == max_steps:
        return max_val, max_point
    if val_range[0] == val_range[1]:
        val_range = (val_range[0], 1)
    bottom, top = val_range
    center = bottom + (top - bottom) * 0.5
    q_bottom, q_top = bottom + (top - bottom) * 0.25, bottom + (top - bottom) * 0.75
    val_bottom, val_top = ref_dice(x > q_bottom, y), ref_dice(x > q_top, y)
    if visited is not None:
        visited += [q_bottom, q_top]
    if val_bottom >= val_top:
        if val_bottom >= max_val:
            max_val, max_point = val_bottom, q_bottom
        return ref_find_best_val(x, y, (bottom, center), max_steps, step + 1, max_val, max_point, visited)
    if val_top >= max_val:
        max_val, max_point = val_top, q_top
    return ref_find_best_val(x, y, (center, top), max_steps, step + 1, max_val, max_point, visited)


def ref_filter_components(binary: np.ndarray) -> np.ndarray:
    """26-connected components whose filled area (holes filled with a full 3x3x3 structure) is <= 7
    are removed."""
    full = np.ones((3, 3, 3))
    labels, _ = ndi.label(binary, structure=full)
    kept = binary.copy()
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        region = labels[box] == index
        if ndi.binary_fill_holes(region, full).sum() <= 7:
            kept[box][region] = False
    return kept


def ref_evaluate(val, test, healthy, healthy_val):
    """Each item: (residual, mask, truth or None, reconstruction or None, image), arrays (H, W, D)."""
    val_scores = [ref_score(r, m) for r, m, *_ in val]
    pooled = np.concatenate([s.ravel() for s in val_scores])
    truth = np.concatenate([t.ravel() for _, _, t, *_ in val]).astype(bool)
    val_dice, threshold = ref_find_best_val(pooled, truth, (0, np.max(pooled)))
    dices, auprcs = [], []
    for r, m, t, *_ in test:
        score = ref_score(r, m)
        found = ref_filter_components(score > threshold)
        dices.append(ref_dice(found, t.astype(bool)))
        auprcs.append(average_precision_score(t.ravel().astype(int), score.ravel()))
    l1 = [np.mean(np.abs(rec - image)) for _, _, _, rec, image in healthy]
    scores = np.concatenate([ref_score(r, m).ravel() for r, m, *_ in healthy_val])
    fpr, _, thresholds = roc_curve(np.zeros(scores.size, int), scores, pos_label=1)
    fpr_thresholds = {f"{p}%": thresholds[np.argmax(fpr > p / 100)] for p in (1, 5, 10)}
    return threshold, val_dice, dices, auprcs, float(np.nanmean(l1)), fpr_thresholds


@dataclass
class Synthetic:
    case: PreparedCase
    residual: np.ndarray
    rec: np.ndarray


def synthetic_cases(rng, shape, count, lesions=True, empty=False) -> list[Synthetic]:
    """Brains that fill every axial slice (as the reference's cropped brains do) with lesions on the
    first or last slice, a blotchy residual, and a reconstruction; arrays (z, y, x)."""
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    cases = []
    for i in range(count):
        mask = ((y - shape[1] / 2) / (0.42 * shape[1])) ** 2 + ((x - shape[2] / 2) / (0.38 * shape[2])) ** 2 <= 1
        mask = np.broadcast_to(mask, shape).copy()
        truth = np.zeros(shape, bool)
        if lesions and not empty:
            for _ in range(3):
                centre = rng.uniform([0, 0.3 * shape[1], 0.3 * shape[2]],
                                     [shape[0] - 1, 0.7 * shape[1], 0.7 * shape[2]])
                centre[0] = rng.choice([0, shape[0] - 1, centre[0]])
                radius = rng.uniform(1.5, 0.12 * shape[1])
                truth |= ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius**2
            truth &= mask
        image = (rng.uniform(0.2, 0.8, shape) * mask).astype(np.float32)
        residual = ndi.gaussian_filter(rng.gamma(1.0, 0.08, shape), 1.0) + truth * rng.uniform(0.1, 0.5)
        if empty:
            mask[:] = False  # nothing inside the brain: no lesion found, none in the truth
        rec = np.clip(image + rng.normal(0, 0.05, shape) * mask, 0, 1).astype(np.float32)
        case = PreparedCase(f"c{i}", image, mask, truth if lesions else None, {})
        cases.append(Synthetic(case, residual.astype(np.float32), rec))
    return cases


def compare(rng, shape, n_val, n_test, n_healthy):
    val = synthetic_cases(rng, shape, n_val)
    test = synthetic_cases(rng, shape, n_test) + synthetic_cases(rng, shape, 1, empty=True)
    healthy = synthetic_cases(rng, shape, n_healthy, lesions=False)
    healthy_val = synthetic_cases(rng, shape, n_healthy, lesions=False)
    config = PostprocessConfig(mask_erosions=shape[2] // 25)  # the reference's shape[1] // 25 of (H, W, D)

    def scored(items):  # the healthy volumes come with their reconstruction (l1)
        by_case = {id(item.case): item for item in items}
        return score_cases([item.case for item in items],
                           lambda c: ({"": by_case[id(c)].residual}, None if c.seg is not None else by_case[id(c)].rec),
                           config)

    ours = evaluate(scored(val), scored(test), scored(healthy), scored(healthy_val), REFERENCE, config)

    def hwd(items):
        return [tuple(None if a is None else np.moveaxis(a, 0, -1)
                      for a in (i.residual, i.case.mask, i.case.seg, i.rec, i.case.image)) for i in items]

    ref = ref_evaluate(hwd(val), hwd(test), hwd(healthy), hwd(healthy_val))
    return ours, ref


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_numbers_to_the_last_digit_on_96x96x50(seed):
    ours, (threshold, val_dice, dices, auprcs, l1, fpr_thresholds) = compare(
        np.random.default_rng(seed), (50, 96, 96), n_val=2, n_test=2, n_healthy=1)
    assert ours["threshold"] == pytest.approx(threshold, abs=1e-6)
    assert ours["val_dice_pooled"] == pytest.approx(val_dice, abs=1e-6)
    assert [c["dice"] for c in ours["per_case"]] == pytest.approx(dices, abs=1e-6, nan_ok=True)
    assert np.isnan(dices[-1])  # the empty volume: NaN, and left out of the mean
    assert ours["dice_mean"] == pytest.approx(np.nanmean(dices), abs=1e-6)
    assert [c["auprc"] for c in ours["per_case"]] == pytest.approx(auprcs, abs=1e-6)
    assert ours["auprc_mean"] == pytest.approx(np.nanmean(auprcs), abs=1e-6)
    assert ours["l1_mean"] == pytest.approx(l1, rel=1e-6)
    assert ours["fpr_thresholds"] == pytest.approx(fpr_thresholds, abs=1e-6)


def test_threshold_search_against_brute_force_on_random_volumes():
    """On small random volumes (brains touching the border slices), the search equals the recursive
    reference, and no tested threshold has a higher Dice by an independent count (scikit-learn's F1)."""
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        val = synthetic_cases(rng, (12, 32, 32), 2)
        config = PostprocessConfig(mask_erosions=32 // 25)
        residuals = {id(item.case): item.residual for item in val}
        scored = score_cases([item.case for item in val], lambda c, r=residuals: ({"": r[id(c)]}, None), config)
        threshold, best = best_threshold(scored, REFERENCE, config)

        pooled = np.concatenate([s.score.ravel() for s in scored])
        truth = np.concatenate([item.case.seg.ravel() for item in val])
        visited = []
        ref_dice_value, ref_threshold = ref_find_best_val(pooled, truth, (0, np.max(pooled)), visited=visited)
        assert threshold == pytest.approx(ref_threshold, abs=1e-6) and best == pytest.approx(ref_dice_value, abs=1e-6)
        brute = [f1_score(truth, pooled > q, zero_division=0.0) for q in visited]
        assert best == pytest.approx(max(brute), abs=1e-9)
        assert f1_score(truth, pooled > threshold) == pytest.approx(best, abs=1e-9)
