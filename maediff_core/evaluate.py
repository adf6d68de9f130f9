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
from .diffusion_config import levels_text
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
from .reading import case_auroc, choose_reading, false_alarms
from .scoring import ScoringConfig, score_map

# A scorer turns a prepared case into its raw anomaly maps by scoring (label -> (z, y, x) map) and a
# reconstruction (z, y, x; None: none), from which l1 and KL are measured.
Scorer = Callable[[PreparedCase], tuple[dict[str, np.ndarray], np.ndarray | None]]


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


def intensity_scorer(case: PreparedCase) -> tuple[dict[str, np.ndarray], None]:
    """The "Thresh" baseline: the T2 intensity itself is the anomaly score (lesions are bright)."""
    return {"thresh": case.image}, None


def model_scorer(runtime, card, config, scorings: Sequence[ScoringConfig] = ()) -> Scorer:
    """A trained model's maps by each scoring (default: its card's), all from one draw of as many
    reconstructions as the largest takes; l1 and KL are of the first reconstruction."""
    from dataclasses import replace

    from .detect import reconstruct_samples

    scorings = list(scorings) or [card.scoring]
    most = max(scorings, key=lambda s: s.samples)

    def score(case: PreparedCase) -> tuple[dict[str, np.ndarray], np.ndarray]:
        samples = reconstruct_samples(runtime, card, case.image, case.mask, replace(config, scoring=most))
        return {s.label: score_map(case.image, samples, case.mask, s) for s in scorings}, samples[0]

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
    voxel_ml: float = 0.008  # the volume of a model-space voxel (2 mm)


def score_each(cases: Sequence[PreparedCase], scorer: Scorer,
               config: PostprocessConfig = PostprocessConfig()) -> dict[str, list[Scored]]:
    """Every case scored by every scoring of ``scorer``: label -> the post-processed scores."""
    scored: dict[str, list[Scored]] = {}
    for case in cases:
        maps, rec = scorer(case)
        rec_metrics = (None, None, None) if rec is None else (
            l1_error(case.image, rec), l1_error(case.image, rec, case.mask), histogram_kl(case.image, rec, case.mask))
        voxel_ml = float(np.prod(case.record.get("model_grid", {}).get("spacing", [2.0] * 3))) / 1000.0
        for label, raw in maps.items():
            scored.setdefault(label, []).append(Scored(case.name, smooth_scores(raw, case.mask, config), case.mask,
                                                       case.seg, *rec_metrics, voxel_ml=voxel_ml))
    return scored


def score_cases(cases: Sequence[PreparedCase], scorer: Scorer,
                config: PostprocessConfig = PostprocessConfig()) -> list[Scored]:
    """The cases scored by a scorer of one scoring."""
    scored = score_each(cases, scorer, config)
    if len(scored) > 1:
        raise ValueError(f"score_cases takes one scoring, got {', '.join(scored)}")
    return next(iter(scored.values()), [])


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


@dataclass
class Choice:
    """The reconstruction and scoring chosen on the validation volumes."""
    levels: Levels
    scoring: str  # the chosen scoring's label
    val: dict[str, list[Scored]]  # the validation volumes scored at the chosen levels, by every scoring
    dices: dict[tuple[Levels, str], float]  # every candidate's pooled validation Dice


def choose_reconstruction(cases: Sequence[PreparedCase], scorer_at: Callable[[Levels], Scorer],
                          levels: Sequence[Levels], protocol: Protocol = PROTOCOLS["reference"],
                          config: PostprocessConfig = PostprocessConfig()) -> Choice:
    """The noise levels and the scoring, chosen on the validation volumes like the threshold (ours:
    the reference keeps t_test fixed and scores the residual): among candidate levels (or ensembles)
    and the scorer's scorings, the pair whose best pooled Dice is highest (the first given on a tie)."""
    if not levels:
        raise ValueError("give at least one noise level")
    _require_truth("validation", [c.name for c in cases if c.seg is None])
    best: Choice | None = None
    dices: dict[tuple[Levels, str], float] = {}
    for level in levels:
        by_scoring = score_each(cases, scorer_at(level), config)
        for label, scored in by_scoring.items():
            dices[level, label] = best_threshold(scored, protocol, config)[1]
            if best is None or dices[level, label] > dices[best.levels, best.scoring]:
                best = Choice(level, label, by_scoring, dices)
    return best


def evaluate(val: Sequence[Scored], test: Sequence[Scored], healthy: Sequence[Scored] = (),
             healthy_val: Sequence[Scored] = (), protocol: Protocol = PROTOCOLS["reference"],
             config: PostprocessConfig = PostprocessConfig(), reading_val: Sequence[Scored] = ()) -> dict:
    """All numbers of the protocol as a JSON-ready dict (fractions, not per cent). ``healthy``: healthy
    test volumes (l1, our brain-FPR operating points, false alarms); ``healthy_val``: healthy
    validation volumes (the reference's FPR thresholds); ``reading_val``: healthy validation volumes
    the reading operating point is chosen on (never test volumes)."""
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
    result.update(reading_numbers(val, test, healthy, reading_val, protocol, threshold, config))
    return result


def reading_numbers(val: Sequence[Scored], test: Sequence[Scored], healthy: Sequence[Scored],
                    reading_val: Sequence[Scored], protocol: Protocol, threshold: float,
                    config: PostprocessConfig) -> dict:
    """What a reader sees: false alarms at the protocol's threshold, the case-level AUROC of lesion
    against healthy volumes, and (with healthy validation volumes) the reading operating point,
    its test Dice and its false alarms."""
    voxel_ml = test[0].voxel_ml
    out = {"false_alarms": {"protocol": false_alarms(healthy, test, threshold, config.min_component_voxels,
                                                     voxel_ml)}}
    if healthy:
        out["case_auroc"] = case_auroc(test, healthy)
    if reading_val:
        reading = choose_reading(val, reading_val, protocol.both_empty_dice, threshold)
        lesions = PostprocessConfig(min_component_voxels=reading["min_voxels"])
        dices = [dice(lesion_labels(s.score, reading["threshold"], lesions) > 0, s.truth, protocol.both_empty_dice)
                 for s in test]
        out["reading"] = {**reading, "dice_mean": mean_std(dices)[0], "dice_std": mean_std(dices)[1]}
        out["false_alarms"]["reading"] = false_alarms(healthy, test, reading["threshold"], reading["min_voxels"],
                                                      voxel_ml)
    return out


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
