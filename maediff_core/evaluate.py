"""The evaluation protocol: threshold on unhealthy validation volumes, Dice/AUPRC on test volumes,
l1 and false-positive operating points on healthy volumes (docs/reference.md, "Evaluation protocol").

Two protocols share the post-processed score maps. ``reference`` repeats the protocol authors'
``src/utils/utils_eval.py`` step by step, so numbers compare with the papers' tables; ``ours`` keeps
this project's earlier choices, which describe what a user sees at detection more closely.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve

from .cache import PreparedCase
from .diffusion import levels_text
from .files import write_text_atomic
from .metrics import (
    auprc,
    bisect_threshold,
    brain_fpr_thresholds,
    dice,
    histogram_kl,
    l1_error,
    mean_std,
    roc_fpr_thresholds,
)
from .postprocess import PostprocessConfig, lesion_labels, smooth_scores

# A scorer turns a prepared case into (residual map, reconstruction or None), both (z, y, x).
Scorer = Callable[[PreparedCase], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class Protocol:
    """Where the two protocols differ; everything else (post-processing, the bisection and its tie
    rule, per-volume means without NaN) is shared."""
    name: str
    filter_in_search: bool  # binarise with the lesion-size filter inside the threshold search
    l1_in_brain: bool  # healthy l1 inside the brain mask instead of over the whole volume
    both_empty_dice: float  # Dice of a volume with no lesion found and none in its truth
    no_lesion_auprc: float  # AUPRC of a volume without lesion voxels
    summary: str


PROTOCOLS = {
    # utils_eval.py: raw `score > q` in the search, l1 over all voxels, NaN Dice (nanmean), sklearn's AP.
    "reference": Protocol("reference", filter_in_search=False, l1_in_brain=False,
                          both_empty_dice=float("nan"), no_lesion_auprc=0.0,
                          summary="the steps of the protocol authors' utils_eval.py"),
    # The threshold is searched on the lesions detection reports; l1 where the model reconstructs.
    "ours": Protocol("ours", filter_in_search=True, l1_in_brain=True, both_empty_dice=1.0,
                     no_lesion_auprc=float("nan"),
                     summary="threshold searched on size-filtered lesions, l1 inside the brain"),
}


def protocol_named(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}: choose {' or '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def intensity_scorer(case: PreparedCase) -> tuple[np.ndarray, None]:
    """The "Thresh" baseline: the T2 intensity itself is the anomaly score (lesions are bright)."""
    return case.image, None


def model_scorer(model, card, config, device) -> Scorer:
    """Reconstruction by a trained model: residual |x0 - x0_rec| and the reconstruction."""
    from .detect import reconstruct

    def score(case: PreparedCase) -> tuple[np.ndarray, np.ndarray]:
        rec = reconstruct(model, card, case.image, case.mask, config, device)
        return np.abs(case.image - rec), rec

    return score


@dataclass
class Scored:
    name: str
    score: np.ndarray  # post-processed anomaly score
    mask: np.ndarray
    truth: np.ndarray | None
    l1_volume: float | None = None  # mean |x - x_rec| over the whole volume (None: no reconstruction)
    l1_brain: float | None = None  # ... inside the brain mask
    kl: float | None = None  # KL divergence of the reconstruction's brain histogram from the input's


def score_cases(cases: Sequence[PreparedCase], scorer: Scorer,
                config: PostprocessConfig = PostprocessConfig()) -> list[Scored]:
    scored = []
    for case in cases:
        residual, rec = scorer(case)
        rec_metrics = (None, None, None) if rec is None else (
            l1_error(case.image, rec), l1_error(case.image, rec, case.mask), histogram_kl(case.image, rec, case.mask))
        scored.append(Scored(case.name, smooth_scores(residual, case.mask, config), case.mask, case.seg, *rec_metrics))
    return scored


def _require_truth(name: str, missing: list[str]) -> None:
    """``missing``: the cases without a lesion segmentation."""
    if missing:
        raise ValueError(f"{name} cases need a lesion segmentation: {', '.join(missing[:5])}")


def best_threshold(val: Sequence[Scored], protocol: Protocol = PROTOCOLS["reference"],
                   config: PostprocessConfig = PostprocessConfig()) -> tuple[float, float]:
    """The threshold of the best Dice over the pooled voxels of the validation volumes (bisection of
    [0, max]); the reference binarises the raw map, ours filters lesions as detection does."""
    truth = np.concatenate([s.truth.ravel() for s in val]).astype(bool)
    maximum = max(float(s.score.max()) for s in val)
    if protocol.filter_in_search:
        def dice_at(threshold: float) -> float:
            found = np.concatenate([(lesion_labels(s.score, threshold, config) > 0).ravel() for s in val])
            return dice(found, truth, protocol.both_empty_dice)
    else:
        pooled = np.concatenate([s.score.ravel() for s in val])

        def dice_at(threshold: float) -> float:
            return dice(pooled > threshold, truth, protocol.both_empty_dice)
    return bisect_threshold(dice_at, maximum)


Levels = tuple[int, ...] | None  # a t_test ensemble; None: the model's own


def choose_t_test(cases: Sequence[PreparedCase], scorer_at: Callable[[Levels], Scorer],
                  levels: Sequence[Levels], protocol: Protocol = PROTOCOLS["reference"],
                  config: PostprocessConfig = PostprocessConfig(),
                  ) -> tuple[Levels, list[Scored], dict[Levels, float]]:
    """The noise levels of the reconstruction, chosen on the validation volumes like the threshold
    (ours: the reference keeps t_test fixed): among candidate levels or ensembles, the one whose best
    pooled Dice is highest (the first given on a tie). Returns it, the validation volumes scored with
    it, and every candidate's pooled Dice."""
    if not levels:
        raise ValueError("give at least one noise level")
    _require_truth("validation", [c.name for c in cases if c.seg is None])
    best: tuple[Levels, list[Scored]] | None = None
    dices: dict[Levels, float] = {}
    for level in levels:
        scored = score_cases(cases, scorer_at(level), config)
        dices[level] = best_threshold(scored, protocol, config)[1]
        if best is None or dices[level] > dices[best[0]]:
            best = (level, scored)
    return best[0], best[1], dices


def evaluate(val: Sequence[Scored], test: Sequence[Scored], healthy: Sequence[Scored] = (),
             healthy_val: Sequence[Scored] = (), protocol: Protocol = PROTOCOLS["reference"],
             config: PostprocessConfig = PostprocessConfig()) -> dict:
    """All numbers of the protocol as a JSON-ready dict (fractions, not per cent). ``healthy``: healthy
    test volumes (l1, our brain-FPR operating points); ``healthy_val``: healthy validation volumes
    (the reference's FPR thresholds)."""
    _require_truth("validation", [s.name for s in val if s.truth is None])
    _require_truth("test", [s.name for s in test if s.truth is None])
    if not val or not test:
        raise ValueError("the protocol needs unhealthy validation and test cases")

    def test_dice(threshold: float) -> list[float]:
        return [dice(lesion_labels(s.score, threshold, config) > 0, s.truth, protocol.both_empty_dice) for s in test]

    threshold, val_dice = best_threshold(val, protocol, config)
    dices = test_dice(threshold)
    auprcs = [auprc(s.score, s.truth, protocol.no_lesion_auprc) for s in test]
    result = {
        "protocol": protocol.name,
        "threshold": threshold,
        "val_dice_pooled": val_dice,
        "dice_mean": mean_std(dices)[0], "dice_std": mean_std(dices)[1],
        "auprc_mean": mean_std(auprcs)[0], "auprc_std": mean_std(auprcs)[1],
        "n_val": len(val), "n_test": len(test), "n_healthy": len(healthy), "n_healthy_val": len(healthy_val),
        "per_case": [{"case": s.name, "dice": d, "auprc": a, "kl": s.kl}
                     for s, d, a in zip(test, dices, auprcs, strict=True)],
    }
    kls = [s.kl for s in test if s.kl is not None]
    if kls:
        result["kl_mean"] = mean_std(kls)[0]
    if healthy:
        l1s = [s.l1_brain if protocol.l1_in_brain else s.l1_volume for s in healthy]
        l1s = [v for v in l1s if v is not None]
        result["l1_mean"] = mean_std(l1s)[0] if l1s else None
        result["l1_scope"] = "brain" if protocol.l1_in_brain else "volume"
        result["brain_fpr"] = {
            f"{int(rate * 100)}%": {"threshold": t, "dice_mean": mean_std(test_dice(t))[0]}
            for rate, t in brain_fpr_thresholds([s.score for s in healthy], [s.mask for s in healthy]).items()}
    if healthy_val:
        result["fpr_thresholds"] = {f"{int(rate * 100)}%": t
                                    for rate, t in roc_fpr_thresholds([s.score for s in healthy_val]).items()}
    return result


def write_report(result: dict, test: Sequence[Scored], out_dir: str | Path, title: str) -> list[Path]:
    """``metrics.json``, ``metrics.md`` and a pooled precision-recall plot ``pr_curve.png``."""
    out_dir = Path(out_dir)
    paths = [write_text_atomic(json.dumps(result, indent=1) + "\n", out_dir / "metrics.json")]
    lines = [f"# {title}", "", f"Protocol: {result['protocol']} ({PROTOCOLS[result['protocol']].summary}).", "",
             "| metric | value |", "|---|---|",
             f"| Dice (test, mean +- std) | {100 * result['dice_mean']:.2f} +- {100 * result['dice_std']:.2f} % |",
             f"| AUPRC (test, mean +- std) | {100 * result['auprc_mean']:.2f} +- {100 * result['auprc_std']:.2f} % |",
             f"| threshold (validation Dice search) | {result['threshold']:.4f} |"]
    if "t_test" in result:
        chosen = ", ".join(f"{t}: {100 * d:.1f} %" for t, d in result.get("t_test_val_dice_pooled", {}).items())
        noised = "whole slices" if result.get("whole_slice") else f"stride {result['stride']}"
        lines.append(f"| reconstruction | t_test {levels_text(result['t_test'])}, {noised}"
                     + (f" (ours: chosen by pooled validation Dice, {chosen}) |" if chosen else " |"))
    if result.get("kl_mean") is not None:
        lines.append(f"| KL(input || reconstruction) of brain histograms (test, mean) | {result['kl_mean']:.4f} |")
    if result.get("contrast"):
        lines.append(f"| contrast shift of every volume | {result['contrast']} |")
    if result.get("l1_mean") is not None:
        lines.append(f"| l1 healthy (1e-3, mean over the {result['l1_scope']}) | {1000 * result['l1_mean']:.2f} |")
    for rate, t in result.get("fpr_thresholds", {}).items():
        lines.append(f"| threshold at {rate} FPR (ROC over all voxels of healthy validation volumes) | {t:.4f} |")
    for rate, point in result.get("brain_fpr", {}).items():
        lines.append(f"| Dice at {rate} of healthy test brain voxels flagged (ours; t={point['threshold']:.4f}) "
                     f"| {100 * point['dice_mean']:.2f} % |")
    lines += ["", f"{result['n_val']} validation, {result['n_test']} test, {result['n_healthy']} healthy test and "
              f"{result['n_healthy_val']} healthy validation volumes."]
    paths.append(write_text_atomic("\n".join(lines) + "\n", out_dir / "metrics.md"))
    paths.append(_pr_plot(test, out_dir / "pr_curve.png", title))
    return paths


def _pr_plot(test: Sequence[Scored], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.concatenate([s.score.ravel() for s in test])
    truth = np.concatenate([s.truth.ravel() for s in test]).astype(bool)
    precision, recall, _ = precision_recall_curve(truth, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{title} (pooled voxels)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
