"""The model file format: a method's configuration and card as JSON (``card``, ``parsing``), its
weights as safetensors committed with the JSON as a pair (``pairs``), loading and publishing
(``store``) and the Markdown card (``markdown``)."""

from .card import ModelCard, with_operating_point
from .markdown import card_markdown, recipe_text
from .pairs import model_paths, read_pair, recover_pair, save_pair, sha256_of
from .store import load_card, load_model, load_weights, publish_model, rewrite_card, save_model

__all__ = ["ModelCard", "card_markdown", "load_card", "load_model", "load_weights", "model_paths", "publish_model",
           "read_pair", "recover_pair", "recipe_text", "rewrite_card", "save_model", "save_pair", "sha256_of",
           "with_operating_point"]
