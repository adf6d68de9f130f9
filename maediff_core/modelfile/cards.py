"""Model cards read and rewritten without their weights' framework: what detection on ONNX Runtime
and the commands that only read a card need (weights in torch: store.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..errors import CardError
from ..files import write_text_atomic
from .card import ModelCard
from .markdown import card_markdown
from .pairs import model_paths, read_json, read_pair


def card_from_record(meta: Path, record: dict) -> ModelCard:
    try:
        return replace(ModelCard.from_dict(record), folder=meta.parent)
    except ValueError as err:
        raise CardError(f"{meta}: not a valid model card: {err}") from None


def load_card(path: str | Path) -> ModelCard:
    meta = model_paths(path)[1]
    return card_from_record(meta, read_json(meta))


def weights_mb(card: ModelCard, weights: Path) -> float:
    parts = [card.extra_weight_path(name) for name in card.extra_weights]
    return sum(p.stat().st_size for p in [weights, *parts]) / 1e6


def rewrite_card(card: ModelCard, path: str | Path) -> Path:
    """A model's JSON replaced by ``card``, beside the same weights: their SHA-256 is kept, and the
    weights are verified first, so a card is never moved onto weights it was not made for. A
    published model's Markdown card is written again from it."""
    weights, record = read_pair(path)
    digest = {"weights_sha256": record["weights_sha256"]} if "weights_sha256" in record else {}
    meta = model_paths(path)[1]
    write_text_atomic(json.dumps({**card.to_dict(), **digest}, indent=1) + "\n", meta)
    markdown = meta.with_suffix(".md")
    if markdown.is_file():
        write_text_atomic(card_markdown(card, weights_mb(replace(card, folder=meta.parent), weights)), markdown)
    return meta
