"""The model card (the JSON beside a model's weights) as the panel shows and uses it."""

from __future__ import annotations

import json
from pathlib import Path

MODEL_DEFAULT = "model's"  # the choice that keeps the card's; 0 does the same for t_test and threshold
SCORINGS = ("residual", "mean:4", "mhd:4", "mhd:10")  # the panel's choices (maediff detect --scoring)
POINT_MEANINGS = {
    "reading": "Operating point in use: reading. Its threshold and smallest lesion were chosen on normal brains "
               "for at most about one lesion candidate each: fewer false alarms, some small lesions missed.",
    "protocol": "Operating point in use: protocol. Its threshold was chosen for the best Dice on lesion volumes, "
                "as in the papers' tables: more of each lesion, and more candidates on normal brains.",
}


def read_card(path: str | Path) -> dict:
    path = Path(path)
    meta = path.with_suffix(".json") if path.suffix == ".safetensors" else path
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: no model card")
    return json.loads(meta.read_text())


def is_synthetic(card: dict) -> bool:
    """True when the model learnt only from generated phantoms (the card says so)."""
    training = card.get("training", {})
    return bool(training.get("synthetic_data")) or "phantom" in card.get("description", "").lower()


def operating_point(card: dict) -> dict:
    """What ``maediff detect`` uses unless told otherwise: t_test as text (one level, or an ensemble
    such as ``250, 500, 750``), stride, threshold (None if the card has none), and whether the model
    noises whole slices (then there is no stride)."""
    config = card.get("config", {})
    patch = config.get("patch", {})
    levels = config.get("diffusion", {}).get("t_test")
    levels = ", ".join(str(t) for t in levels) if isinstance(levels, list) else str(levels)
    point = "reading" if card.get("reading") else "protocol"
    return {"t_test": levels, "stride": patch.get("stride"), "threshold": card.get("threshold"),
            "whole_slice": bool(patch.get("whole_slice")), "point": point, "scoring": scoring_label(card)}


def scoring_label(card: dict) -> str:
    """How the card scores, as ``maediff detect --scoring`` names it (scoring.ScoringConfig.label)."""
    scoring = card.get("scoring") or {}
    name, samples = scoring.get("name", "residual"), scoring.get("samples", 1)
    if name == "residual":
        return name
    return f"{name}:{samples}" + (":raw" if name == "mhd" and not scoring.get("normalise", True) else "")


def point_in_use(card: dict, choice: str) -> str:
    """The operating point a run takes: the one chosen, else the card's."""
    return operating_point(card)["point"] if choice == MODEL_DEFAULT else choice


def threshold_text(card: dict, point: str) -> str:
    """What the threshold box shows at its lowest value: the threshold of the point in use."""
    threshold = (card.get("reading") or {}).get("threshold") if point == "reading" else card.get("threshold")
    return f"model's ({threshold:.4f})" if threshold is not None else "none in the model: set one"


def overrides(t_test: int, stride: str, threshold: float, point: str = MODEL_DEFAULT,
              scoring: str = MODEL_DEFAULT) -> dict:
    """The detect options the user changed (0 or MODEL_DEFAULT: keep the card's), as
    ``DetectRequest`` fields; everything else comes from the card."""
    return {"t_test": t_test or None, "stride": None if stride == MODEL_DEFAULT else int(stride),
            "threshold": threshold or None, "operating_point": None if point == MODEL_DEFAULT else point,
            "scoring": None if scoring == MODEL_DEFAULT else scoring}


def summary(card: dict) -> str:
    config = card.get("config", {})
    training = card.get("training", {})
    point = operating_point(card)
    parts = [f"{config.get('name', '?')} ({config.get('method', '?')})",
             f"t_test {point['t_test']}" + ("" if point["whole_slice"] else f", stride {point['stride']}")]
    if config.get("latent"):
        parts.append("scores the change its repair of the latent makes (MAD-AD)")
    if training.get("epoch") is not None:
        parts.append(f"{training['epoch']} epochs on {training.get('train_volumes', '?')} volumes")
    parts.append(f"threshold {point['threshold']:.4f}" if point["threshold"] is not None else "no threshold")
    text = "; ".join(parts)
    if card.get("description"):
        text += "\n" + card["description"]
    return text
