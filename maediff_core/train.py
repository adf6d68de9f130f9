"""Patch-wise training on healthy slices (paper Algorithm 1), resumable after a kill.

The plain model lives in ``networks``; this module owns the loop: data, optimiser, validation,
checkpoints (safetensors + JSON), metrics CSV, TensorBoard, bf16 on CUDA and DistributedDataParallel
under ``torchrun``. A first stage, in the run's folder of its name, can train a part before the model
through the same loop: MAD-AD's autoencoder, frozen for its latent denoiser (repair.py has their
objectives), or cDDPM's encoder, pre-trained on masked slices (encoder_pretraining.py) and trained on
with the whole network.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .augment import augment
from .cache import load_prepared, select, split_of
from .device import pick_device
from .diffusion import Diffusion, noised_input, patch_l1, patch_masks, random_corners
from .encoder_pretraining import STRIDE, MaskedPretrainer, PretrainConfig, pretraining_loss
from .files import VolumeError
from .models import (SMALL_CONFIGS, ModelCard, ModelConfig, get_config, load_card, load_weights, read_pair,
                     recover_pair, save_model, save_pair, sha256_of)
from .networks import visible_cells
from .repair import autoencoder_loss, denoiser_loss, fit_latent_scale

MIN_BRAIN_FRACTION = 0.01  # slices with less brain than this carry no anatomy to learn
RESUMED_SETTINGS = ("batch_size", "lr", "slices_per_volume", "fold", "seed", "augment", "ema", "pretrain",
                    "schedule", "warmup", "init")  # per run
# A decaying rate is a function of the whole run's length: its horizon cannot change on resume.
HORIZON_SETTINGS = ("epochs", "max_minutes")
SCHEDULES = ("constant", "cosine")
COSINE_FLOOR = 0.1  # the cosine ends at this part of the peak rate, not at 0, where the last steps would be lost
AUGMENTED_METHODS = ("cddpm",)  # cDDPM code: aug_intensity in training; the MAEDiff and pDDPM papers have none
FIRST_STAGES = ("autoencoder", "encoder")  # MAD-AD's autoencoder, cDDPM's encoder pre-training


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
# The most model per CPU-minute on 2 cores (README, "Training per CPU-minute"; scripts/recipe_study.sh):
# the small configurations. Batch 16 costs what batch 8 does per sample (32: 1.4x); 8 slices per
# volume keep epochs, and so validations, a few minutes apart; the EMA lowered every validation loss
# at no cost per step; a warm-up and cosine decay, at 2e-4 or 5e-4, did worse within 15 minutes.
CPU_RECIPE = Recipe(batch_size=16, lr=2e-4, slices_per_volume=8, ema=0.999, schedule="constant")
# What a training record from before a setting existed trained with.
LEGACY = {"augment": False, "ema": 0.0, "schedule": "constant"}


def recipe_of(config: ModelConfig) -> Recipe:
    return CPU_RECIPE if config.name in SMALL_CONFIGS else PAPER_RECIPE


@dataclass
class TrainConfig:
    epochs: int = 1600  # paper Sec. 4.3: up to 1600 epochs
    batch_size: int | None = None  # None here and below: the configuration's recipe (recipe_of)
    lr: float | None = None  # Adam's rate (the peak of a schedule)
    slices_per_volume: int | None = None  # random brain slices of each volume per epoch
    fold: int = 0  # validation fold of split.csv (IXI: 5 folds)
    seed: int = 0
    val_slices: int = 8  # evenly spaced brain slices per validation volume
    max_minutes: float | None = None  # stop at the first epoch end past this budget
    device: str = "auto"
    augment: bool | None = None  # intensity augmentation (augment.py); None: as the method's paper (AUGMENTED_METHODS)
    ema: float | None = None  # largest decay of an EMA of the weights, published as the model; 0: none
    pretrain: bool = False  # cDDPM: masked pre-training of its encoder first (cDDPM paper, optional)
    first_stage_share: float = 0.25  # the part of max_minutes (all stages) a first stage takes
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


def ema_update(max_decay: float, power: float = 2 / 3):
    """An EMA step for ``AveragedModel`` whose decay grows with the number of updates n,
    min(max_decay, 1 - (1 + n)^-power) (ema_pytorch's warm-up): a short run averages over its recent
    steps, not over its random initialisation."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        decay = min(max_decay, 1.0 - (1.0 + float(updates)) ** -power)
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, 1.0 - decay)
            else:
                a.copy_(c)  # counters such as BatchNorm's

    return update


def brain_slices(mask: np.ndarray) -> np.ndarray:
    fraction = mask.reshape(mask.shape[0], -1).mean(1)
    return np.flatnonzero(fraction >= MIN_BRAIN_FRACTION)


def resolved(train: TrainConfig, config: ModelConfig) -> TrainConfig:
    """``train`` with the settings it leaves unset decided: by the configuration's recipe, and
    augmentation by the method's paper."""
    recipe = asdict(recipe_of(config))
    unset = {key: value for key, value in recipe.items() if getattr(train, key) is None}
    if train.augment is None:
        unset["augment"] = config.method in AUGMENTED_METHODS
    return replace(train, **unset)


def check_stage(config: ModelConfig, stage: str | None, pretrain: bool) -> None:
    """Refuse a stage, or a pre-training, that ``config`` does not have."""
    if pretrain and config.encoder is None:
        raise VolumeError(f"--pretrain pre-trains cDDPM's encoder; {config.name} has none")
    if config.latent is not None:
        if stage not in ("autoencoder", "denoiser"):
            raise VolumeError(f"{config.name} trains in the stages autoencoder, denoiser: name one")
    elif stage == "encoder":
        if config.encoder is None:
            raise VolumeError(f"{config.name} has no encoder to pre-train (--stage encoder is cDDPM's)")
        if config.patch.size % STRIDE:
            raise VolumeError(f"encoder pre-training needs slices whose side is a multiple of {STRIDE}, "
                              f"not {config.patch.size}")
    elif stage is not None:
        raise VolumeError(f"{config.name} trains in one stage; leave out --stage")


def stages_of(config: ModelConfig, train: TrainConfig) -> list[str | None]:
    """The stages of a run, in order; None is the whole model in one."""
    if config.latent is not None:
        return ["autoencoder", "denoiser"]
    return ["encoder", None] if train.pretrain else [None]


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


class SliceData:
    """All training slices in memory, as (volume, slice) pairs of brain-bearing slices."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray]):
        self.images = [torch.from_numpy(im * 2.0 - 1.0) for im in images]  # model input in [-1, 1]
        self.masks = [torch.from_numpy(m.astype(bool)) for m in masks]
        self.slices = [brain_slices(m) for m in masks]
        if not any(len(s) for s in self.slices):
            raise VolumeError("no slice with brain in the training volumes")

    def epoch_size(self, per_volume: int) -> int:
        """How many (volume, slice) pairs epoch_order draws."""
        return per_volume * sum(1 for s in self.slices if len(s))

    def epoch_order(self, rng: np.random.Generator, per_volume: int) -> list[tuple[int, int]]:
        pairs = [(v, int(rng.choice(s))) for v, s in enumerate(self.slices) if len(s) for _ in range(per_volume)]
        return [pairs[i] for i in rng.permutation(len(pairs))]

    def batch(self, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) slices in [-1, 1] and their brain masks."""
        return (torch.stack([self.images[v][z] for v, z in pairs]).unsqueeze(1),
                torch.stack([self.masks[v][z] for v, z in pairs]).unsqueeze(1).float())


def training_step(model: torch.nn.Module, x0: torch.Tensor, brain: torch.Tensor | None, generator: torch.Generator,
                  config: ModelConfig, diffusion: Diffusion) -> torch.Tensor:
    """Algorithm 1 on a batch: noise one patch per slice (or the whole slice), predict x0 (seeing the
    clean slice where the network is conditioned on it), L1 inside the noised region. The patch may
    cover non-brain (``brain`` is for MAD-AD's objective, which never noises it)."""
    n = x0.shape[0]
    t = diffusion.sample_t(n, generator).to(x0.device)
    noise = diffusion.noise_like(x0, generator)
    mask = patch_masks(random_corners(n, config.patch, generator), config.patch).to(x0.device, x0.dtype)
    x_tilde = noised_input(x0, diffusion.q_sample(x0, t, noise), mask)
    visible = visible_cells(mask, config.patch.grid) if config.mae is not None else None
    return patch_l1(model(x_tilde, t, visible, clean=x0), x0, mask)


class Trainer:
    """One training stage: the whole network, one of MAD-AD's two stages, or cDDPM's encoder pre-training."""

    def __init__(self, config: ModelConfig, train: TrainConfig, data_dir: str | Path, run_dir: str | Path,
                 preprocessing: dict | None = None, stage: str | None = None):
        check_stage(config, stage, train.pretrain)
        train = resolved(train, config)
        if stage == "encoder":  # its record says so, and a later --pretrain run resumes it
            train = replace(train, pretrain=True)
        self.config, self.train, self.run_dir, self.stage = config, train, Path(run_dir), stage
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = pick_device(train.device)
        if self.world > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        rows = split_of(data_dir)
        train_names, val_names = select(rows, "train", train.fold), select(rows, "val", train.fold)
        if not train_names or not val_names:
            raise VolumeError(f"{data_dir}: split.csv has no train/val cases for fold {train.fold}"
                              " (prepare a healthy cohort)")
        train_cases = load_prepared(data_dir, train_names)
        if any(c.seg is not None and c.seg.any() for c in train_cases):
            raise VolumeError("training cases contain lesions: train on healthy volumes only")
        self.data = SliceData([c.image for c in train_cases], [c.mask for c in train_cases])
        pairs = self.data.epoch_size(self.train.slices_per_volume)
        self.steps_per_epoch = math.ceil(math.ceil(pairs / self.world) / self.train.batch_size)
        self.val = load_prepared(data_dir, val_names)
        self.preprocessing = preprocessing or train_cases[0].record.get("config", {})
        self.spacing_mm = float(train_cases[0].record["model_grid"]["spacing"][0])  # model space is isotropic
        self.diffusion = Diffusion(config.diffusion)
        torch.manual_seed(train.seed)  # weight initialisation
        self.network = config.build().to(self.device)
        self.started_from = self.warm_start(train.init) if train.init is not None else None
        self.model = self.network  # what this stage trains, checkpoints and publishes
        self.objective = partial(training_step, config=config, diffusion=self.diffusion)
        self.first_stage: dict | None = None  # the card's record of the first stage this one starts from
        optimizer = partial(torch.optim.Adam, lr=train.lr)
        if stage == "autoencoder":
            self.model = self.network.autoencoder
            self.objective = partial(autoencoder_loss, config=config.latent.autoencoder)
        elif stage == "denoiser":
            self.model = self.network.denoiser
            self.objective = partial(denoiser_loss, network=self.network, diffusion=self.diffusion)
            self.first_stage = self.frozen_autoencoder()
        elif stage == "encoder":
            pretraining = PretrainConfig()
            self.model = MaskedPretrainer(config.encoder, pretraining).to(self.device)
            self.objective = partial(pretraining_loss, config=pretraining)
            optimizer = partial(torch.optim.AdamW, lr=train.lr, weight_decay=pretraining.weight_decay)
        elif self.train.pretrain:
            self.first_stage = self.first_stage_weights("encoder", self.network.condition.resnet, prefix="resnet.")
        self.optimizer = optimizer(self.model.parameters())
        self.ema = None
        if self.train.ema:  # buffers too: BatchNorm statistics of cDDPM's encoder
            self.ema = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=ema_update(self.train.ema),
                                                           use_buffers=True).eval()
        self.generator = torch.Generator().manual_seed(train.seed * 1000 + self.rank)
        self.rng = np.random.default_rng(train.seed)  # the epoch order, identical on every rank
        self.epoch, self.step, self.best_val, self.seconds = 0, 0, math.inf, 0.0
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The pre-trainer leaves the ResNet's classifier head unused.
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                 find_unused_parameters=stage == "encoder")

    @property
    def published(self) -> torch.nn.Module:
        """The weights that are validated and saved as ``best``: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def warm_start(self, path: str) -> dict:
        """The network starts from a published model's weights: a longer run of a released model, or
        one fine-tuned on another cohort, without the minutes already spent on it. The optimiser (and
        an EMA) start afresh from them. Returns the card's record of that model and its training, with
        the models it started from in turn."""
        if self.stage is not None or self.train.pretrain:
            raise VolumeError(f"--init starts a network trained in one stage; {self.config.name} trains in "
                              "stages" + (" (here with --pretrain)" if self.train.pretrain else ""))
        weights, record = read_pair(path)
        card = load_card(path)
        # A published card holds its operating point; the network is the same at any t_test and stride.
        network = replace(card.config, diffusion=replace(card.config.diffusion, t_test=self.config.diffusion.t_test),
                          patch=replace(card.config.patch, stride=self.config.patch.stride))
        if network != self.config:
            raise VolumeError(f"{path}: a {card.config.name} model cannot start a {self.config.name} run "
                              "(their networks differ)")
        load_weights(weights, self.network, self.device)
        done = card.training
        return {"model": Path(path).name, "sha256": record.get("weights_sha256") or sha256_of(weights),
                **{k: done.get(k) for k in ("epoch", "step", "seconds", "best_val_loss")},
                **({"started_from": done["started_from"]} if done.get("started_from") else {})}

    def first_stage_weights(self, name: str, model: torch.nn.Module, prefix: str = "") -> dict:
        """The best weights of the first stage ``name`` loaded into ``model``; returns the card's
        record of them: their file, SHA-256 and that stage's whole training (its last checkpoint's
        record, rather than the epoch of its best)."""
        source = self.run_dir / name / "best"
        recover_pair(source)
        if not source.with_suffix(".json").is_file():
            raise VolumeError(f"{source.with_suffix('.json')}: no trained {name}; train the {name} stage first "
                              f"(maediff train --stage {name}, or without --stage for all stages)")
        weights, record = read_pair(source)
        load_weights(weights, model, self.device, prefix=prefix)
        last = self.run_dir / name / "last.json"
        done = json.loads(last.read_text())["card"]["training"] if last.is_file() else record["training"]
        return {"stage": name, "weights": f"{name}/{weights.name}", "sha256": record["weights_sha256"],
                "training": {k: done.get(k) for k in ("epoch", "step", "seconds", "best_val_loss")}}

    def frozen_autoencoder(self) -> dict:
        """MAD-AD's denoiser stage: the autoencoder stage's best weights, frozen, and the latent scale
        fitted on the training slices."""
        record = self.first_stage_weights("autoencoder", self.network.autoencoder)
        self.network.autoencoder.eval().requires_grad_(False)
        pairs = [(v, int(z)) for v, s in enumerate(self.data.slices) for z in s]
        chosen = [pairs[i] for i in np.linspace(0, len(pairs) - 1, min(256, len(pairs))).astype(int)]
        scale = fit_latent_scale(self.network.autoencoder, self.data.batch(chosen)[0].to(self.device))
        self.network.denoiser.scale.fill_(scale)  # a resumed run loads its own
        return record

    # -- checkpoints ------------------------------------------------------------------------
    def card(self, val_loss: float | None = None) -> ModelCard:
        training = {**asdict(self.train), "epoch": self.epoch, "step": self.step, "val_loss": val_loss,
                    "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
                    "train_volumes": len(self.data.images), "val_volumes": len(self.val),
                    "seconds": round(self.seconds, 1), "world_size": self.world}
        reference = None
        if self.stage is not None:
            training["stage"] = self.stage
        if self.started_from is not None:
            training["started_from"] = self.started_from
        if self.first_stage is not None:
            training[self.first_stage["stage"]] = {**self.first_stage["training"], "sha256": self.first_stage["sha256"]}
            if self.stage == "denoiser":  # frozen, so the model names its file; a pre-trained encoder trains on
                reference = {k: self.first_stage[k] for k in ("weights", "sha256")}
        return ModelCard(self.config, preprocessing=self.preprocessing, training=training, autoencoder=reference)

    def save_last(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state = self.optimizer.state_dict()
        for index, values in state["state"].items():
            for key, value in values.items():
                tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        tensors["rng.torch"] = self.generator.get_state()
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        resume = {"epoch": self.epoch, "step": self.step, "best_val": self.best_val, "seconds": self.seconds,
                  "param_groups": state["param_groups"], "numpy_rng": self.rng.bit_generator.state}
        save_pair(tensors, {"card": self.card().to_dict(), "resume": resume}, self.run_dir / "last")

    def resume(self) -> bool:
        """Continue from ``last``: the weights, the optimiser and both random generators as saved."""
        for name in ("best", "last"):  # a kill while saving: finish or undo that save
            recover_pair(self.run_dir / name)
        if not (self.run_dir / "last.json").is_file():
            return False
        weights, saved = read_pair(self.run_dir / "last")
        try:
            config = ModelConfig.from_dict(saved["card"]["config"])
            r = saved["resume"]
            done = saved["card"]["training"]
        except (KeyError, TypeError, VolumeError) as err:
            raise VolumeError(f"{self.run_dir / 'last.json'}: not a checkpoint ({err}); use --restart") from None
        if config != self.config:
            raise VolumeError(f"{self.run_dir}: holds a run of another configuration; use a new folder or --restart")
        # The optimiser (its learning rate included) and the data order resume as saved: other
        # settings would be silently ignored.
        keys = changed_settings(done, self.train)
        if keys:
            changed = ", ".join(f"{key} {done.get(key)} (asked {getattr(self.train, key)})" for key in keys)
            why = ("; a cosine schedule decays over the run's length, which cannot change"
                   if set(keys) & set(HORIZON_SETTINGS) else "")
            raise VolumeError(f"{self.run_dir}: holds a run trained with {changed}{why}; "
                              "pass the same settings, or use a new folder or --restart")
        if self.first_stage is not None:
            name = self.first_stage["stage"]
            started_from = saved["card"].get("autoencoder") if name == "autoencoder" else done.get(name)
            if (started_from or {}).get("sha256") != self.first_stage["sha256"]:
                raise VolumeError(f"{self.run_dir}: was trained from another {name} than {name}/best; "
                                  "--restart this stage")
        if self.started_from is not None and (done.get("started_from") or {}).get("sha256") != self.started_from["sha256"]:
            raise VolumeError(f"{self.run_dir}: started from other weights than {self.train.init}; use a new folder "
                              "or --restart")
        tensors = load_weights(weights, self.model, "cpu", prefix="model.")
        optim_state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state.setdefault(int(index), {})[name] = value.to(self.device) if name != "step" else value
        self.optimizer.load_state_dict({"state": optim_state, "param_groups": r["param_groups"]})
        if self.ema is not None:
            self.ema.load_state_dict({k[len("ema."):]: v.to(self.device) for k, v in tensors.items()
                                      if k.startswith("ema.")})
        self.generator.set_state(tensors["rng.torch"])
        self.rng.bit_generator.state = r["numpy_rng"]
        self.epoch, self.step, self.best_val, self.seconds = r["epoch"], r["step"], r["best_val"], r["seconds"]
        return True

    # -- loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """L1 inside the patch on fixed slices, patches, timesteps and noise (comparable across epochs),
        of the published weights."""
        model = self.published
        model.eval()
        generator = torch.Generator().manual_seed(12345)
        losses = []
        for case in self.val:
            slices = brain_slices(case.mask)
            chosen = slices[np.linspace(0, len(slices) - 1, min(self.train.val_slices, len(slices))).astype(int)]
            x0 = torch.from_numpy(case.image[chosen] * 2.0 - 1.0).unsqueeze(1).to(self.device)
            brain = torch.from_numpy(case.mask[chosen].astype(np.float32)).unsqueeze(1).to(self.device)
            with self.autocast():
                losses.append(float(self.objective(model, x0, brain, generator)))
        self.model.train()
        return float(np.mean(losses))

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def fit(self, deadline: float | None = None) -> dict:
        """Train until the run's epochs or budget are spent or, where ``deadline`` (a time.perf_counter()
        value) is given, until the first epoch end past it: a time slice of the run, which a later call
        resumes with its budget and schedule unchanged."""
        main = self.rank == 0
        writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step)
        self.model.train()
        started = time.perf_counter() - self.seconds
        bar = tqdm(total=self.train.epochs, initial=self.epoch, desc=f"train {self.config.name}",
                   unit="epoch", disable=not main)
        stopped = False
        while self.epoch < self.train.epochs and not self.out_of_time() and not stopped:
            order = self.data.epoch_order(self.rng, self.train.slices_per_volume)
            mine = order[self.rank::self.world]
            losses = []
            for i in range(0, len(mine), self.train.batch_size):
                if self.train.schedule != "constant":
                    self.seconds = self.agreed(time.perf_counter() - started)
                    for group in self.optimizer.param_groups:
                        group["lr"] = self.train.lr * lr_factor(self.progress(), self.train.warmup)
                x0, brain = (t.to(self.device) for t in self.data.batch(mine[i:i + self.train.batch_size]))
                if self.train.augment:  # on 0..1 intensities, the range the transforms are defined on
                    x0 = augment((x0 + 1) / 2, self.generator, spacing_mm=self.spacing_mm) * 2 - 1
                with self.autocast():
                    loss = self.objective(self.net, x0, brain, self.generator)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step += 1
                losses.append(loss.item())
            self.epoch += 1
            self.seconds = self.agreed(time.perf_counter() - started)
            if main:
                val_loss = self.validate()
                train_loss = float(np.mean(losses)) if losses else float("nan")
                improved = val_loss < self.best_val
                if improved:
                    self.best_val = val_loss
                    save_model(self.published, self.card(val_loss), self.run_dir / "best")
                self.save_last()
                self._log(writer, train_loss, val_loss)
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best="*" if improved else "")
            bar.update(1)
            stopped = deadline is not None and self.agreed(time.perf_counter() > deadline) > 0
        bar.close()
        if writer:
            writer.close()
        if self.world > 1:
            dist.destroy_process_group()
        result = {"epochs": self.epoch, "steps": self.step, "best_val_loss": self.best_val, "seconds": self.seconds}
        unfinished = self.epoch < self.train.epochs and not self.out_of_time()
        return {**result, "stopped": True} if stopped and unfinished else result

    def agreed(self, value: float) -> float:
        """Rank 0's ``value`` on every rank: the clock behind the budget, the schedule and the stop,
        so that no rank stops alone or steps at another rate."""
        if self.world == 1:
            return float(value)
        shared = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, 0)
        return float(shared)

    def budget_seconds(self) -> float | None:
        """This stage's part of ``max_minutes``, the whole run's: a first stage takes
        ``first_stage_share`` of it."""
        if self.train.max_minutes is None:
            return None
        share = 1.0
        if self.stage in FIRST_STAGES:
            share = self.train.first_stage_share
        elif self.stage == "denoiser" or self.train.pretrain:
            share = 1 - self.train.first_stage_share
        return 60 * self.train.max_minutes * share

    def out_of_time(self) -> bool:
        """Past the budget: checked at epoch ends, so a resumed run that spent it trains no further."""
        budget = self.budget_seconds()
        return budget is not None and self.seconds > budget

    def progress(self) -> float:
        """How much of the run is done, 0..1: of its epochs, or of its budget where that ends first."""
        done = self.step / (self.train.epochs * self.steps_per_epoch)
        budget = self.budget_seconds()
        if budget is not None:
            done = max(done, self.seconds / budget)
        return min(done, 1.0)

    def _log(self, writer, train_loss: float, val_loss: float) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as handle:
            out = csv.writer(handle)
            if new:
                out.writerow(["epoch", "step", "train_loss", "val_loss", "seconds"])
            out.writerow([self.epoch, self.step, f"{train_loss:.6f}", f"{val_loss:.6f}", f"{self.seconds:.1f}"])
        writer.add_scalar("loss/train", train_loss, self.step)
        writer.add_scalar("loss/val", val_loss, self.step)


def train(config_name: str, data_dir: str | Path, run_dir: str | Path, train_config: TrainConfig,
          restart: bool = False, stage: str | None = None, stop_after_minutes: float | None = None) -> dict:
    """Train (or resume) a configuration; all its stages in order unless ``stage`` names one. With
    ``stop_after_minutes``, this call stops at the first epoch end past that many minutes of its own
    (a job runner's time limit); calling again resumes the run where it stopped."""
    config = get_config(config_name)
    stages = [stage] if stage else stages_of(config, train_config)
    for name in stages:  # before anything is deleted
        check_stage(config, name, train_config.pretrain)
    deadline = None if stop_after_minutes is None else time.perf_counter() + 60 * stop_after_minutes
    results = []
    for name in stages:
        if results and (results[-1].get("stopped") or (deadline is not None and time.perf_counter() > deadline)):
            return {**results[-1], "stopped": True}
        folder = Path(run_dir) / name if name in FIRST_STAGES else Path(run_dir)
        if restart:
            for file in ("last.json", "last.safetensors", ".last.json.pending", "metrics.csv"):
                (folder / file).unlink(missing_ok=True)
        trainer = Trainer(config, train_config, data_dir, folder, stage=name)
        if not restart and trainer.resume():
            print(f"resuming {folder} at epoch {trainer.epoch} (step {trainer.step})")
        results.append(trainer.fit(deadline))
    if len(results) == 1:
        return results[0]
    return {**results[-1], "seconds_all_stages": sum(r["seconds"] for r in results)}
