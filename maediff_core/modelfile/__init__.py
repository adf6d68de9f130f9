"""The model file format: a method's configuration and card as JSON (``card``, ``parsing``), its
weights as safetensors committed with the JSON as a pair (``pairs``), cards read and rewritten
(``cards``), weights loaded and published in torch (``store``) and the Markdown card (``markdown``).
Only ``store`` imports torch, on first use of its names: reading a card needs no torch."""

from .card import ModelCard, with_operating_point
from .cards import load_card, rewrite_card
from .markdown import card_markdown, recipe_text
from .pairs import model_paths, read_pair, recover_pair, save_pair, sha256_of

TORCH_NAMES = ("load_model", "load_weights", "publish_model", "save_model")


def __getattr__(name: str):
    if name in TORCH_NAMES:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelCard", "card_markdown", "load_card", "load_model", "load_weights", "model_paths", "publish_model",
           "read_pair", "recover_pair", "recipe_text", "rewrite_card", "save_model", "save_pair", "sha256_of",
           "with_operating_point"]
