"""The human-readable model card, written from the JSON card."""

from __future__ import annotations

from ..diffusion_config import levels_text
from ..methods import method_of
from .card import ModelCard

IXI_RECIPE = """\
maediff prepare /data/IXI-T2 -o data/ixi --workers 8          # IXI*-T2.nii.gz, flat folder
maediff prepare /data/BraTS2021 -o data/brats21 --workers 8   # BraTS2021_*/..._t2.nii.gz + _seg
maediff train --data data/ixi --config maediff -o runs/maediff   # paper settings; resumes if stopped
maediff evaluate --model runs/maediff/best.json --val data/brats21 --test data/brats21 \\
    --healthy data/ixi --use-splits --save-threshold -o eval/maediff-brats21
maediff publish runs/maediff/best.json -o models/maediff-ixi --description "MAEDiff trained on IXI T2"
"""


def recipe_text(training: dict) -> str:
    """A training record's recipe in words: batch, rate and its schedule, EMA, slices, augmentation."""
    text = f"batch {training.get('batch_size', '?')}, learning rate {training.get('lr', '?')}"
    if training.get("schedule", "constant") != "constant":
        text += f" ({training['schedule']} schedule, warm-up {100 * training.get('warmup', 0):.0f} % of the run)"
    if training.get("ema"):
        text += f", published as the EMA of its weights (decay {training['ema']})"
    text += f", {training.get('slices_per_volume', '?')} slices per volume per epoch"
    return text + (", intensity augmentation" if training.get("augment") else "")


def metric_line(name: str, m: dict) -> str:
    """One measurement of the card, in words, with the command that made it."""
    if name == "sample":
        return (f"- on {m['data']}: Dice {100 * m['dice']['mean']:.1f} %, {m['lesions']['mean']:.0f} lesion candidates "
                f"(`{m['command']}`)")
    text = (f"- on {m['n']} volumes of {m['data']}, {m['protocol']} protocol, scoring {m.get('scoring', 'residual')}: "
            f"Dice {100 * m['dice']['mean']:.1f} +- {100 * m['dice']['std']:.1f} %, AUPRC "
            f"{100 * m['auprc']['mean']:.1f} +- {100 * m['auprc']['std']:.1f} %")
    if "reading_dice" in m:
        text += f", Dice {100 * m['reading_dice']['mean']:.1f} % at the reading point"
    if "healthy_candidates_protocol" in m:
        text += (f"; lesion candidates per healthy volume ({m['n_healthy']}) "
                 + " and ".join(f"{m[key]['mean']:.1f} (at most {m[key]['max']}) at the {key.rsplit('_', 1)[1]} point"
                                for key in ("healthy_candidates_protocol", "healthy_candidates_reading") if key in m))
    return text + f" (`{m['command']}`)"


def _use_lines(card: ModelCard) -> list[str]:
    lines = ["For research use only; not a medical device.", ""]
    if card.training.get("synthetic_data"):
        lines = ["**Trained on synthetic data.** The training volumes are phantoms generated from the MNI152",
                 "2009a template's tissue maps (`maediff phantom`), not scans of people. This model is for",
                 "demonstration and testing of the software only. It is not a medical device and must not be",
                 "used for diagnosis or any clinical decision.", ""]
    return lines + ([f"**Intended use:** {card.intended_use}", ""] if card.intended_use else [])


SCORING_TEXT = {"mean": "the residual to the mean of its reconstructions",
                "mhd": "the Mahalanobis distance of the input from its reconstructions"}


def _what_lines(card: ModelCard, weights_mb: float) -> list[str]:
    t, c = card.training, card.config
    method = method_of(c.method)
    extra = ", ".join(f"the {name}'s in `{ref['weights']}`" for name, ref in card.extra_weights.items())
    lines = [
        "## What it is",
        f"- method `{c.method}`, configuration `{c.name}`: {method.network_text(c)}",
        f"- noised region: {method.noised_text(c)}",
        "- anomaly score: " + (card.score if card.scoring.name == "residual" else
                               f"{SCORING_TEXT[card.scoring.name]} ({card.scoring.label}: {card.scoring.samples} "
                               f"reconstructions; one alone gives {card.score})")
        + ", median filtered in the eroded brain",
        f"- weights: {weights_mb:.1f} MB{' in all' if extra else ''} (safetensors, {t.get('weights_dtype', 'float32')})"
        + (f", {extra}" if extra else ""),
        f"- decision threshold: {card.threshold if card.threshold is not None else 'none (pass --threshold)'}"
        + (f", chosen on {t['threshold_from']['val']} (pooled validation Dice "
           f"{100 * t['threshold_from']['val_dice_pooled']:.1f} %, "
           f"{t['threshold_from'].get('protocol', 'ours')} evaluation protocol)" if t.get("threshold_from") else ""),
    ]
    if card.reading:
        lines.append(f"- reading operating point (what `maediff detect` and the panel use unless told): threshold "
                     f"{card.reading['threshold']:.4f} and lesions of {card.reading['min_voxels']}+ voxels"
                     + (f", chosen for {card.reading['target']}" if "target" in card.reading else "")
                     + "; the threshold above is the evaluation protocol's")
    if card.onnx:
        lines.append("- ONNX (for detection without torch): " + ", ".join(
            f"the {name} in `{e['file']}` (opset {e['opset']}, {', '.join(e['inputs'])} -> {', '.join(e['outputs'])}, "
            f"within {e['parity']:.1g} of torch)" for name, e in card.onnx.items()))
    if card.inputs.get("contrast"):
        ranges = [f"{k.upper().replace('_', ' - ')} {lo:.2f} to {hi:.2f}"
                  for k, (lo, hi) in card.inputs["contrast"].items()]
        lines.append("- inputs it knows (the training volumes'; `maediff detect` checks them): T2, tissue contrast "
                     + ", ".join(ranges)
                     + (f", slices {card.inputs['slice_mm'][0]:g} to {card.inputs['slice_mm'][1]:g} mm"
                        if card.inputs.get("slice_mm") else ""))
    for name, m in card.metrics.items():
        lines.append(metric_line(name, m))
    levels = t.get("threshold_from", {}).get("t_test_val_dice_pooled")
    if levels:
        lines.append(f"- t_test {levels_text(c.diffusion.t_test)} chosen on the same validation volumes, by pooled "
                     "Dice: " + ", ".join(f"{level}: {100 * d:.1f} %" for level, d in levels.items())
                     + f" ({t['threshold_from'].get('t_test_protocol', 'ours')} evaluation protocol)")
    return lines


def _training_lines(card: ModelCard) -> list[str]:
    t, c = card.training, card.config
    stages = method_of(c.method).stages(c, bool(t.get("pretrain")))
    lines = [
        "## How it was trained",
        f"- data: {t.get('train_volumes', '?')} training and {t.get('val_volumes', '?')} validation volumes"
        + (f" from `{t['data']}`" if t.get("data") else ""),
        f"- {t.get('epoch', '?')} epochs, {t.get('step', '?')} steps, {recipe_text(t)}, seed {t.get('seed', '?')}, "
        f"{t.get('seconds', 0) / 60:.0f} minutes" + (f" ({stages[-1].title})" if stages[-1].name else ""),
    ]
    s, first = t.get("started_from"), True
    while s:  # each model this one started from, back to the run that started at random
        lines.append(("- started from" if first else "- which started from") + f" the weights of `{s['model']}` "
                     f"(SHA-256 {s['sha256'][:12]})" + (", not at random" if first else "") + ": "
                     f"{s.get('epoch', '?')} epochs, {s.get('step', '?')} steps and {(s.get('seconds') or 0) / 60:.0f} "
                     "minutes before " + ("the ones above" if first else "those"))
        s, first = s.get("started_from"), False
    for stage in stages[:-1]:
        done = t.get(stage.name)
        if done:
            lines.append(f"- before it, {stage.title}: {done.get('epoch', '?')} epochs, {done.get('step', '?')} "
                         f"steps, {done.get('seconds', 0) / 60:.0f} minutes, best validation loss "
                         f"{done.get('best_val_loss') or 0:.4f}")
    if t.get("command"):
        lines += ["- recipe:", "", "```", t["command"].rstrip(), "```"]
    return lines


def card_markdown(card: ModelCard, weights_mb: float) -> str:
    """The Markdown card of ``card`` whose weight files hold ``weights_mb`` MB in all."""
    lines = [f"# Model card: {card.config.name}", "", card.description or "(no description)", "",
             *_use_lines(card), *_what_lines(card, weights_mb), "", *_training_lines(card), "",
             "## Train on a real healthy cohort instead", "",
             "With IXI T2 volumes as the healthy cohort and BraTS21 for the threshold:", "",
             "```", IXI_RECIPE.rstrip(), "```", ""]
    return "\n".join(lines)
