"""The evaluation protocol: threshold on unhealthy validation volumes, Dice/AUPRC on test volumes,
l1 and false-positive operating points on healthy volumes (REFERENCE.md, "Evaluation protocol")."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from sklearn.metrics import precision_recall_curve

from .datasets import PreparedCase
from .metrics import auprc, dice, fpr_thresholds, l1_error, mean_std, search_threshold
from .postprocess import PostprocessConfig, lesion_labels, smooth_scores
from .volume_io import write_text_atomic

# A scorer turns a prepared case into (residual map, reconstruction or None), both (z, y, x).
# Optional, not `X | None`: this alias is evaluated at import time.
Scorer = Callable[[PreparedCase], tuple[np.ndarray, Optional[np.ndarray]]]


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
    l1: float | None


def score_cases(cases: Sequence[PreparedCase], scorer: Scorer,
                config: PostprocessConfig = PostprocessConfig()) -> list[Scored]:
    scored = []
    for case in cases:
        residual, reconstruction = scorer(case)
        l1 = l1_error(case.image, reconstruction, case.mask) if reconstruction is not None else None
        scored.append(Scored(case.name, smooth_scores(residual, case.mask, config), case.mask, case.seg, l1))
    return scored


def _require_truth(name: str, missing: list[str]) -> None:
    """``missing``: the cases without a lesion segmentation."""
    if missing:
        raise ValueError(f"{name} cases need a lesion segmentation: {', '.join(missing[:5])}")


def best_threshold(val: Sequence[Scored], config: PostprocessConfig = PostprocessConfig()) -> tuple[float, float]:
    """The threshold of the best pooled Dice on validation volumes, lesions filtered as at detection."""
    return search_threshold([s.score for s in val], [s.truth for s in val],
                            lambda score, threshold: lesion_labels(score, threshold, config) > 0)


def choose_t_test(cases: Sequence[PreparedCase], scorer_at: Callable[[int | None], Scorer],
                  levels: Sequence[int | None], config: PostprocessConfig = PostprocessConfig(),
                  ) -> tuple[int | None, list[Scored], dict[int | None, float]]:
    """The noise level of the reconstruction, chosen on the validation volumes like the threshold:
    the level whose best pooled Dice is highest (the first given on a tie; None stands for the
    model's own). Returns that level, the validation volumes scored at it, and every level's pooled Dice."""
    if not levels:
        raise ValueError("give at least one noise level")
    _require_truth("validation", [c.name for c in cases if c.seg is None])
    best: tuple[int | None, list[Scored]] | None = None
    dices: dict[int | None, float] = {}
    for level in levels:
        scored = score_cases(cases, scorer_at(level), config)
        dices[level] = best_threshold(scored, config)[1]
        if best is None or dices[level] > dices[best[0]]:
            best = (level, scored)
    return best[0], best[1], dices


def evaluate(val: Sequence[Scored], test: Sequence[Scored], healthy: Sequence[Scored] = (),
             config: PostprocessConfig = PostprocessConfig()) -> dict:
    """All numbers of the protocol as a JSON-ready dict (fractions, not per cent)."""
    _require_truth("validation", [s.name for s in val if s.truth is None])
    _require_truth("test", [s.name for s in test if s.truth is None])
    if not val or not test:
        raise ValueError("the protocol needs unhealthy validation and test cases")

    def binarise(score: np.ndarray, threshold: float) -> np.ndarray:
        return lesion_labels(score, threshold, config) > 0

    threshold, val_dice = best_threshold(val, config)
    dices = [dice(binarise(s.score, threshold), s.truth) for s in test]
    auprcs = [auprc(s.score, s.truth) for s in test]
    result = {
        "threshold": threshold,
        "val_dice_pooled": val_dice,
        "dice_mean": mean_std(dices)[0], "dice_std": mean_std(dices)[1],
        "auprc_mean": mean_std(auprcs)[0], "auprc_std": mean_std(auprcs)[1],
        "n_val": len(val), "n_test": len(test), "n_healthy": len(healthy),
        "per_case": [{"case": s.name, "dice": d, "auprc": a} for s, d, a in zip(test, dices, auprcs)],
    }
    if healthy:
        l1s = [s.l1 for s in healthy if s.l1 is not None]
        result["l1_mean"] = float(np.mean(l1s)) if l1s else None
        operating = {}
        for rate, t in fpr_thresholds([s.score for s in healthy], [s.mask for s in healthy]).items():
            test_dice = [dice(binarise(s.score, t), s.truth) for s in test]
            operating[f"{int(rate * 100)}%"] = {"threshold": t, "dice_mean": mean_std(test_dice)[0]}
        result["healthy_fpr"] = operating
    return result


def write_report(result: dict, test: Sequence[Scored], out_dir: str | Path, title: str) -> list[Path]:
    """``metrics.json``, ``metrics.md`` and a pooled precision-recall plot ``pr_curve.png``."""
    out_dir = Path(out_dir)
    paths = [write_text_atomic(json.dumps(result, indent=1) + "\n", out_dir / "metrics.json")]
    lines = [f"# {title}", "", "| metric | value |", "|---|---|",
             f"| Dice (test, mean +- std) | {100 * result['dice_mean']:.2f} +- {100 * result['dice_std']:.2f} % |",
             f"| AUPRC (test, mean +- std) | {100 * result['auprc_mean']:.2f} +- {100 * result['auprc_std']:.2f} % |",
             f"| threshold (val Dice search) | {result['threshold']:.4f} |"]
    if "t_test" in result:
        chosen = ", ".join(f"{t}: {100 * d:.1f} %" for t, d in result.get("t_test_val_dice_pooled", {}).items())
        lines.append(f"| reconstruction | t_test {result['t_test']}, stride {result['stride']}"
                     + (f" (val pooled Dice by t_test: {chosen}) |" if chosen else " |"))
    if result.get("l1_mean") is not None:
        lines.append(f"| l1 healthy (1e-3) | {1000 * result['l1_mean']:.2f} |")
    for rate, point in result.get("healthy_fpr", {}).items():
        lines.append(f"| Dice at {rate} healthy FPR (t={point['threshold']:.4f}) | {100 * point['dice_mean']:.2f} % |")
    lines += ["", f"{result['n_val']} validation, {result['n_test']} test, {result['n_healthy']} healthy volumes."]
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
