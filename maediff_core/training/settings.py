"""What a training run is asked to do: its settings, the recipes that fill the unset ones, and the
learning-rate schedule. A run resumes only under the settings it was trained with."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..methods import is_small, method_of
from ..methods.base import ModelConfig

RESUMED_SETTINGS = ("batch_size", "lr", "slices_per_volume", "fold", "seed", "augment", "ema", "pretrain",
                    "schedule", "warmup", "init")  # per run
# A decaying rate is a function of the whole run's length: its horizon cannot change on resume.
HORIZON_SETTINGS = ("epochs", "max_minutes")
SCHEDULES = ("constant", "cosine")
COSINE_FLOOR = 0.1  # the cosine ends at this part of the peak rate, not at 0, where the last steps would be lost


@dataclass(frozen=True)
class Recipe:
    """The training settings a configuration takes where its TrainConfig leaves them unset."""
    batch_size: int
    lr: float
    slices_per_volume: int
    ema: float  # largest decay of the EMA of the weights; 0: none (the weights themselves)
    schedule: str


# MAEDiff paper Sec. 4.3 (Adam, batch 32, lr 1e-4) and the reference's one random slice per volume
# per epoch, at one rate and without an EMA: the paper-size configurations.
PAPER_RECIPE = Recipe(batch_size=32, lr=1e-4, slices_per_volume=1, ema=0.0, schedule="constant")
# The most model per CPU-minute on 2 cores (docs/training-per-cpu-minute.md; scripts/recipe_study.sh):
# the small configurations. Batch 16 costs what batch 8 does per sample (32: 1.4x); 8 slices per
# volume keep epochs, and so validations, a few minutes apart; the EMA lowered every validation loss
# at no cost per step; a warm-up and cosine decay, at 2e-4 or 5e-4, did worse within 15 minutes.
CPU_RECIPE = Recipe(batch_size=16, lr=2e-4, slices_per_volume=8, ema=0.999, schedule="constant")
# What a training record from before a setting existed trained with.
LEGACY = {"augment": False, "ema": 0.0, "schedule": "constant"}


def recipe_of(config: ModelConfig) -> Recipe:
    return CPU_RECIPE if is_small(config) else PAPER_RECIPE


@dataclass
class TrainConfig:
    epochs: int = 1600  # MAEDiff paper Sec. 4.3: up to 1600 epochs
    batch_size: int | None = None  # None here and below: the configuration's recipe (recipe_of)
    lr: float | None = None  # the optimiser's rate (the peak of a schedule)
    slices_per_volume: int | None = None  # random brain slices of each volume per epoch
    fold: int = 0  # validation fold of split.csv (IXI: 5 folds)
    seed: int = 0
    val_slices: int = 8  # evenly spaced brain slices per validation volume
    max_minutes: float | None = None  # stop at the first epoch end past this budget
    device: str = "auto"
    augment: bool | None = None  # intensity augmentation (augment.py); None: as the method's paper (Method.augment)
    ema: float | None = None  # largest decay of an EMA of the weights, published as the model; 0: none
    pretrain: bool = False  # the method's optional first stage too (cDDPM: masked pre-training of its encoder)
    first_stage_share: float = 0.25  # the part of max_minutes (all stages) each stage before the last takes
    schedule: str | None = None  # "constant" (the papers'), or "cosine": warm-up, then a decay over the run
    warmup: float = 0.05  # cosine: the part of the run (of max_minutes, or of the epochs) warming up linearly
    init: str | None = None  # a published model (.json) whose weights the network starts from, not random ones

    def __post_init__(self) -> None:
        counts = {"epochs": self.epochs, "batch_size": self.batch_size, "slices_per_volume": self.slices_per_volume,
                  "val_slices": self.val_slices}
        for name, value in counts.items():
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value}")
        if (self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0)) or self.fold < 0:
            raise ValueError(f"need a finite lr > 0 and a fold >= 0, got lr {self.lr}, fold {self.fold}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ValueError(f"max-minutes must be a finite number > 0, got {self.max_minutes}")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ValueError(f"ema must lie in [0, 1) (0: none), got {self.ema}")
        if not 0 < self.first_stage_share < 1:
            raise ValueError(f"first-stage-share must lie between 0 and 1, got {self.first_stage_share}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a part of the run, at least 0 and below 1, got {self.warmup}")


def lr_factor(progress: float, warmup: float) -> float:
    """The rate of a cosine schedule, as a part of the peak, after ``progress`` (0..1) of the run:
    linear from 0 over the first ``warmup`` of it, then half a cosine down to COSINE_FLOOR."""
    if progress < warmup:
        return progress / warmup
    decayed = min(1.0, (progress - warmup) / (1.0 - warmup))
    return COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * decayed))


def resolved(train: TrainConfig, config: ModelConfig) -> TrainConfig:
    """``train`` with the settings it leaves unset decided: by the configuration's recipe, and
    augmentation by the method's paper."""
    recipe = asdict(recipe_of(config))
    unset = {key: value for key, value in recipe.items() if getattr(train, key) is None}
    if train.augment is None:
        unset["augment"] = method_of(config.method).augment
    return replace(train, **unset)


def changed_settings(saved: dict, config: TrainConfig, keys: tuple[str, ...] | None = None) -> list[str]:
    """Those of ``keys`` (by default the resumed settings, and the run's length where the rate
    decays over it) in which a resolved ``config`` differs from a saved run's training record (a
    setting the record predates, or holds as None, counts as what runs trained with then: LEGACY)."""
    if keys is None:
        keys = RESUMED_SETTINGS + (HORIZON_SETTINGS if config.schedule != "constant" else ())

    def saved_value(key: str):
        value = saved.get(key)
        return LEGACY.get(key, getattr(TrainConfig(), key)) if value is None else value

    return [key for key in keys if saved_value(key) != getattr(config, key)]
