"""Training on healthy slices, resumable after a kill: one loop for every method and stage.

A method gives its stages (methods.base.Stage): what each trains and with which objective and
optimiser. This module owns the rest: data, validation, checkpoints (safetensors + JSON), metrics
CSV, TensorBoard, bf16 on CUDA and DistributedDataParallel under ``torchrun``. A stage before the
last trains in the run's folder of its name, on ``first_stage_share`` of the budget; the next stage
starts from its best weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..augment import augment
from ..cache import load_prepared, select, split_of
from ..device import pick_device
from ..diffusion import Diffusion
from ..errors import CardError, InputError, OptionError
from ..methods import get_config, method_of
from ..methods.base import ModelConfig, Stage
from ..modelfile import ModelCard, load_card, load_weights, read_pair, recover_pair, save_model, sha256_of
from .checkpoints import COUNTERS, load_checkpoint, save_checkpoint
from .settings import HORIZON_SETTINGS, TrainConfig, changed_settings, lr_factor, resolved
from .slices import SliceData, brain_slices


def ema_update(max_decay: float, power: float = 2 / 3):
    """An EMA step for ``AveragedModel`` whose decay grows with the number of updates n,
    min(max_decay, 1 - (1 + n)^-power) (ema_pytorch's warm-up): a short run averages over its recent
    steps, not over its random initialisation."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        decay = min(max_decay, 1.0 - (1.0 + float(updates)) ** -power)
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, 1.0 - decay)
            else:
                a.copy_(c)  # counters such as BatchNorm's

    return update


def stage_plan(config: ModelConfig, stage: str | None, pretrain: bool) -> tuple[list[Stage], int]:
    """The run's stages and the index of ``stage`` among them (None: the model's own single stage).
    Naming an optional stage asks for it, as ``pretrain`` does."""
    method = method_of(config.method)
    every = method.stages(config, pretrain=True)
    if pretrain and len(every) == len(method.stages(config)):
        raise OptionError(f"--pretrain trains a method's optional first stage; {config.name} has none")
    names = [s.name for s in every]
    if stage not in names:
        if names == [None]:
            raise OptionError(f"{config.name} trains in one stage; leave out --stage")
        named = ", ".join(name for name in names if name)
        raise OptionError(f"{config.name} trains in the stages {named}" + ("" if None in names else ": name one"))
    optional = every[names.index(stage)].optional
    stages = method.stages(config, pretrain=pretrain or optional)
    return stages, [s.name for s in stages].index(stage)


def input_ranges(records: list[dict]) -> dict:
    """What the training volumes were like, for the card (``ModelCard.inputs``): the range of their
    tissue contrasts (measured by ``maediff prepare``; caches from before it have none) and of their
    largest voxel spacing, the slice thickness of most scans. From the records alone: training runs
    where SimpleITK is absent."""
    slices = [max(r["native_grid"]["spacing"]) for r in records]
    out = {"slice_mm": [round(min(slices), 3), round(max(slices), 3)]}
    measured = [r["contrast"] for r in records if r.get("contrast")]
    if measured and len(measured) == len(records):
        out["contrast"] = {name: [min(m[name] for m in measured), max(m[name] for m in measured)]
                           for name in ("csf_wm", "gm_wm", "csf_gm")}
    return out


class Trainer:
    """One training stage of a configuration: the whole network, or one stage of a method that
    trains in several."""

    def __init__(self, config: ModelConfig, train: TrainConfig, data_dir: str | Path, run_dir: str | Path,
                 preprocessing: dict | None = None, stage: str | None = None):
        self.stages, self.index = stage_plan(config, stage, train.pretrain)
        self.spec = self.stages[self.index]
        # The record says whether the run has its optional stage, so that a later run resumes it alike.
        train = replace(resolved(train, config), pretrain=any(s.optional for s in self.stages))
        self.config, self.train, self.run_dir, self.stage = config, train, Path(run_dir), stage
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = pick_device(train.device)
        self.join_processes()
        self.load_data(data_dir, preprocessing)
        self.diffusion = Diffusion(config.diffusion)
        torch.manual_seed(train.seed)  # weight initialisation
        self.network = config.build().to(self.device)
        self.started_from = self.warm_start(train.init) if train.init is not None else None
        # The card's record of the stage this one starts from.
        self.first_stage = self.take_previous_stage() if self.index else None
        self.model = self.spec.trains(self.network).to(self.device)  # what this stage trains, saves and publishes
        self.objective = self.spec.objective(self.network, self.diffusion)
        self.optimizer = self.spec.optimizer(self.model.parameters(), train.lr)
        self.ema = None
        if train.ema:  # buffers too: BatchNorm statistics of cDDPM's encoder
            self.ema = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=ema_update(train.ema),
                                                           use_buffers=True).eval()
        self.generator = torch.Generator().manual_seed(train.seed * 1000 + self.rank)
        self.rng = np.random.default_rng(train.seed)  # the epoch order, identical on every rank
        self.epoch, self.step, self.best_val, self.seconds = 0, 0, math.inf, 0.0
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                 find_unused_parameters=self.spec.unused_parameters)

    def join_processes(self) -> None:
        """Under ``torchrun``: this rank's GPU, and the process group."""
        if self.world == 1:
            return
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def load_data(self, data_dir: str | Path, preprocessing: dict | None) -> None:
        rows = split_of(data_dir)
        train_names, val_names = select(rows, "train", self.train.fold), select(rows, "val", self.train.fold)
        if not train_names or not val_names:
            raise InputError(f"{data_dir}: split.csv has no train/val cases for fold {self.train.fold}"
                             " (prepare a healthy cohort)")
        train_cases = load_prepared(data_dir, train_names)
        if any(c.seg is not None and c.seg.any() for c in train_cases):
            raise InputError("training cases contain lesions: train on healthy volumes only")
        self.data = SliceData([c.image for c in train_cases], [c.mask for c in train_cases])
        pairs = self.data.epoch_size(self.train.slices_per_volume)
        self.steps_per_epoch = math.ceil(math.ceil(pairs / self.world) / self.train.batch_size)
        self.val = load_prepared(data_dir, val_names)
        self.preprocessing = preprocessing or train_cases[0].record.get("config", {})
        self.inputs = input_ranges([c.record for c in train_cases])
        self.spacing_mm = float(train_cases[0].record["model_grid"]["spacing"][0])  # model space is isotropic

    @property
    def published(self) -> torch.nn.Module:
        """The weights that are validated and saved as ``best``: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def warm_start(self, path: str) -> dict:
        """The network starts from a published model's weights: a longer run of a released model, or
        one fine-tuned on another cohort, without the minutes already spent on it. The optimiser (and
        an EMA) start afresh from them. Returns the card's record of that model and its training, with
        the models it started from in turn."""
        if len(self.stages) > 1:
            raise OptionError(f"--init starts a network trained in one stage; {self.config.name} trains in stages "
                              + ", ".join(s.name or "the model" for s in self.stages))
        weights, record = read_pair(path)
        card = load_card(path)
        # A published card holds its operating point; the network is the same at any t_test and stride.
        network = replace(card.config, diffusion=replace(card.config.diffusion, t_test=self.config.diffusion.t_test),
                          patch=replace(card.config.patch, stride=self.config.patch.stride))
        if network != self.config:
            raise CardError(f"{path}: a {card.config.name} model cannot start a {self.config.name} run "
                            "(their networks differ)")
        load_weights(weights, self.network, self.device)
        done = card.training
        return {"model": Path(path).name, "sha256": record.get("weights_sha256") or sha256_of(weights),
                **{k: done.get(k) for k in ("epoch", "step", "seconds", "best_val_loss")},
                **({"started_from": done["started_from"]} if done.get("started_from") else {})}

    def take_previous_stage(self) -> dict:
        """The previous stage's best weights in this stage's part of the network (frozen where the
        stage keeps them fixed); returns the card's record of them: their file, SHA-256 and that
        stage's whole training (its last checkpoint's record, rather than the epoch of its best)."""
        name, spec = self.stages[self.index - 1].name, self.spec
        source = self.run_dir / name / "best"
        recover_pair(source)
        if not source.with_suffix(".json").is_file():
            raise OptionError(f"{source.with_suffix('.json')}: no trained {name}; train the {name} stage first "
                              f"(maediff train --stage {name}, or without --stage for all stages)")
        weights, record = read_pair(source)
        part = spec.takes_into(self.network)
        load_weights(weights, part, self.device, prefix=spec.prefix)
        if spec.frozen:
            part.eval().requires_grad_(False)
        if spec.prepare is not None:
            spec.prepare(self.network, self.data)
        last = self.run_dir / name / "last.json"
        done = json.loads(last.read_text())["card"]["training"] if last.is_file() else record["training"]
        return {"stage": name, "weights": f"{name}/{weights.name}", "sha256": record["weights_sha256"],
                "training": {k: done.get(k) for k in ("epoch", "step", "seconds", "best_val_loss")}}

    # -- checkpoints ------------------------------------------------------------------------
    def card(self, val_loss: float | None = None) -> ModelCard:
        training = {**asdict(self.train), "epoch": self.epoch, "step": self.step, "val_loss": val_loss,
                    "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
                    "train_volumes": len(self.data.images), "val_volumes": len(self.val),
                    "seconds": round(self.seconds, 1), "world_size": self.world}
        extra = {}
        if self.stage is not None:
            training["stage"] = self.stage
        if self.started_from is not None:
            training["started_from"] = self.started_from
        if self.first_stage is not None:
            name = self.first_stage["stage"]
            training[name] = {**self.first_stage["training"], "sha256": self.first_stage["sha256"]}
            if self.spec.frozen:  # the model names the file of weights it keeps fixed; trained-on ones it holds
                extra[name] = {k: self.first_stage[k] for k in ("weights", "sha256")}
        return ModelCard(self.config, preprocessing=self.preprocessing, training=training, extra_weights=extra,
                         inputs=self.inputs)

    def save_last(self) -> None:
        counters = {k: getattr(self, k) for k in COUNTERS}
        save_checkpoint(self.run_dir / "last", self.card().to_dict(), counters, self.model, self.optimizer, self.ema,
                        self.generator, self.rng)

    def resume(self) -> bool:
        """Continue from ``last``: the weights, the optimiser and both random generators as saved."""
        for name in ("best", "last"):  # a kill while saving: finish or undo that save
            recover_pair(self.run_dir / name)
        if not (self.run_dir / "last.json").is_file():
            return False
        weights, saved = read_pair(self.run_dir / "last")
        try:
            config = ModelConfig.from_dict(saved["card"]["config"])
            resume, done = saved["resume"], saved["card"]["training"]
        except (KeyError, TypeError, CardError) as err:
            raise CardError(f"{self.run_dir / 'last.json'}: not a checkpoint ({err}); use --restart") from None
        if config != self.config:
            raise CardError(f"{self.run_dir}: holds a run of another configuration; use a new folder or --restart")
        self.check_resumable(done)
        counters = load_checkpoint(weights, resume, self.device, self.model, self.optimizer, self.ema, self.generator,
                                   self.rng)
        self.epoch, self.step, self.best_val, self.seconds = (counters[k] for k in COUNTERS)
        return True

    def check_resumable(self, done: dict) -> None:
        """The saved run's record ``done`` was trained as this one asks: the optimiser (its learning
        rate included) and the data order resume as saved, so other settings would be silently
        ignored; and from the same first stage and the same published weights."""
        keys = changed_settings(done, self.train)
        if keys:
            changed = ", ".join(f"{key} {done.get(key)} (asked {getattr(self.train, key)})" for key in keys)
            why = ("; a cosine schedule decays over the run's length, which cannot change"
                   if set(keys) & set(HORIZON_SETTINGS) else "")
            raise CardError(f"{self.run_dir}: holds a run trained with {changed}{why}; "
                            "pass the same settings, or use a new folder or --restart")
        if self.first_stage is not None:
            name = self.first_stage["stage"]
            if (done.get(name) or {}).get("sha256") != self.first_stage["sha256"]:
                raise CardError(f"{self.run_dir}: was trained from another {name} than {name}/best; "
                                "--restart this stage")
        started = (done.get("started_from") or {}).get("sha256")
        if self.started_from is not None and started != self.started_from["sha256"]:
            raise CardError(f"{self.run_dir}: started from other weights than {self.train.init}; use a new folder "
                            "or --restart")

    # -- loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """The objective on fixed slices, patches, timesteps and noise (comparable across epochs), of
        the published weights."""
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
            losses = self.run_epoch(started)
            self.epoch += 1
            self.seconds = self.agreed(time.perf_counter() - started)
            if main:
                bar.set_postfix(self.end_epoch(writer, float(np.mean(losses)) if losses else float("nan")))
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

    def run_epoch(self, started: float) -> list[float]:
        """One epoch of this rank's share of the slices; returns its batches' losses."""
        mine = self.data.epoch_order(self.rng, self.train.slices_per_volume)[self.rank::self.world]
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
        return losses

    def end_epoch(self, writer, train_loss: float) -> dict:
        """Validate, save ``best`` when it improved and ``last`` always, log; returns the progress
        bar's figures."""
        val_loss = self.validate()
        improved = val_loss < self.best_val
        if improved:
            self.best_val = val_loss
            save_model(self.published, self.card(val_loss), self.run_dir / "best")
        self.save_last()
        self._log(writer, train_loss, val_loss)
        return {"train": f"{train_loss:.4f}", "val": f"{val_loss:.4f}", "best": "*" if improved else ""}

    def agreed(self, value: float) -> float:
        """Rank 0's ``value`` on every rank: the clock behind the budget, the schedule and the stop,
        so that no rank stops alone or steps at another rate."""
        if self.world == 1:
            return float(value)
        shared = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.broadcast(shared, 0)
        return float(shared)

    def budget_seconds(self) -> float | None:
        """This stage's part of ``max_minutes``, the whole run's: each stage before the last takes
        ``first_stage_share`` of it, the last the rest."""
        if self.train.max_minutes is None:
            return None
        share = 1.0
        if self.index < len(self.stages) - 1:
            share = self.train.first_stage_share
        elif len(self.stages) > 1:
            share = 1 - self.train.first_stage_share * (len(self.stages) - 1)
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


def train(config: str | ModelConfig, data_dir: str | Path, run_dir: str | Path, train_config: TrainConfig,
          restart: bool = False, stage: str | None = None, stop_after_minutes: float | None = None) -> dict:
    """Train (or resume) a configuration (a named one, or a configuration itself); all its stages in
    order unless ``stage`` names one. With ``stop_after_minutes``, this call stops at the first epoch
    end past that many minutes of its own (a job runner's time limit); calling again resumes the run
    where it stopped."""
    config = get_config(config) if isinstance(config, str) else config
    if stage is not None:  # refused before anything is deleted
        stages, index = stage_plan(config, stage, train_config.pretrain)
        chosen = [stages[index]]
    else:
        stages = method_of(config.method).stages(config, train_config.pretrain)
        stage_plan(config, stages[-1].name, train_config.pretrain)
        chosen = stages
    deadline = None if stop_after_minutes is None else time.perf_counter() + 60 * stop_after_minutes
    results = []
    for spec in chosen:
        if results and (results[-1].get("stopped") or (deadline is not None and time.perf_counter() > deadline)):
            return {**results[-1], "stopped": True}
        folder = Path(run_dir) if spec is stages[-1] else Path(run_dir) / spec.name
        if restart:
            for file in ("last.json", "last.safetensors", ".last.json.pending", "metrics.csv"):
                (folder / file).unlink(missing_ok=True)
        trainer = Trainer(config, train_config, data_dir, folder, stage=spec.name)
        if not restart and trainer.resume():
            print(f"resuming {folder} at epoch {trainer.epoch} (step {trainer.step})")
        results.append(trainer.fit(deadline))
    if len(results) == 1:
        return results[0]
    return {**results[-1], "seconds_all_stages": sum(r["seconds"] for r in results)}
