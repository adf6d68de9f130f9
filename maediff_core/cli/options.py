"""Option types and helpers every command shares."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields

DEVICES = ("auto", "cpu", "cuda")


def given(args: argparse.Namespace, config_class) -> dict:
    """The options the user gave that ``config_class`` (a dataclass) has; the rest keep its defaults,
    so every default lives in one place."""
    names = {f.name for f in fields(config_class)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names and v is not None}


def positive_int(text: str) -> int:
    value = int(text)  # argparse reports a ValueError as an invalid value
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value} (leave it out for the default)")
    return value


def t_test_levels(text: str) -> tuple[int, ...]:
    """``500`` or an ensemble ``250,500,750``."""
    return tuple(positive_int(part) for part in text.split(","))


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def scoring_label(text: str):
    """``residual``, ``mean:4``, ``mhd:10`` or ``mhd:10:raw`` (scoring.ScoringConfig.from_label)."""
    from ..scoring import ScoringConfig

    try:
        return ScoringConfig.from_label(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
