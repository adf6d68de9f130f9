"""A one-paragraph summary of a model card (the JSON beside a model's weights) for the panel."""

from __future__ import annotations

import json
from pathlib import Path


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


def summary(card: dict) -> str:
    config = card.get("config", {})
    training = card.get("training", {})
    threshold = card.get("threshold")
    parts = [f"{config.get('name', '?')} ({config.get('method', '?')})",
             f"t_test {config.get('diffusion', {}).get('t_test', '?')}, stride {config.get('patch', {}).get('stride', '?')}"]
    if training.get("epoch") is not None:
        parts.append(f"{training['epoch']} epochs on {training.get('train_volumes', '?')} volumes")
    parts.append(f"threshold {threshold:.4f}" if threshold is not None else "no threshold")
    text = "; ".join(parts)
    if card.get("description"):
        text += "\n" + card["description"]
    return text
