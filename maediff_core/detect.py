"""Detection: patch-wise reconstruction (paper Algorithm 2), anomaly scores and lesions, written on
the input's own grid and in model space.

All (slice, patch position) pairs of a volume are batched together; patches without brain are
skipped (their prediction would be discarded by the brain mask anyway), and a CUDA out-of-memory
error halves the batch and retries. A t_test ensemble (cDDPM) reconstructs at each level, with its
own noise, and averages.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .atlas import card_atlas
from .device import in_batches
from .diffusion import Diffusion, check_levels, levels_text, noised_input, patch_masks
from .files import VolumeError, case_name, check_writable, folder_as_a_set, write_text_atomic
from .latent import MaskedLatentNet
from .models import ModelCard, load_model
from .networks import DiffusionNet, visible_cells
from .postprocess import PostprocessConfig, lesion_labels, smooth_scores
from .preprocess import STEPS, PreprocessConfig, Preprocessed, preprocess, to_native
from .repair import repair_volume
from .timing import Laps
from .volume_io import image_from_array, read_volume, write_volume
from .writeback import labels_to_native

Progress = Callable[[str, float, str], None]
# Patches per forward pass on CPU. Small batches stay in cache: maediff-small on 2 cores takes 70-80 ms
# per patch at 4-8 against 110-115 ms at 16-32, and the demo case reconstructs in 53-59 s at 8 against 96 s
# at 32 (`maediff bench-detect`).
CPU_BATCH = 8


@dataclass
class DetectConfig:
    t_test: tuple[int, ...] | None = None  # None: the model's (MAEDiff paper: 500; cDDPM: 250, 500, 750)
    stride: int | None = None  # None: the model's (MAEDiff: 16)
    batch_size: int | None = None  # None: CPU_BATCH on CPU, 512 on CUDA (halved on out-of-memory)
    threshold: float | None = None  # None: the model card's
    seed: int = 0  # the simplex noise of the reconstruction

    def check_reconstruction(self, card: ModelCard) -> None:
        """Refuse reconstruction settings that cannot hold for this model (before any heavy work)."""
        for name in ("stride", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VolumeError(f"{name.replace('_', '-')} must be a positive integer, got {value} "
                                  "(leave it out for the model's own)")
        if self.t_test is not None:
            try:
                check_levels(self.t_test, card.config.diffusion.timesteps)
            except ValueError as err:
                raise VolumeError(str(err)) from None
        patch = card.config.patch
        try:
            patch.positions(self.stride)
        except ValueError as err:
            raise VolumeError(str(err)) from None
        stride = self.stride or patch.stride
        # The MAE module sees whole grid cells: a patch off the grid hides a different number of them.
        if card.config.mae is not None and not patch.whole_slice and stride % patch.grid:
            raise VolumeError(f"stride {stride}: a MAEDiff model's patches lie on its {patch.grid}-pixel grid "
                              f"(paper Sec. 3.2); use a multiple of {patch.grid}")

    def decision_threshold(self, card: ModelCard) -> float:
        """The given threshold, else the card's; refused unless a finite number >= 0."""
        threshold, source = ((self.threshold, "--threshold") if self.threshold is not None
                             else (card.threshold, "the model card's threshold"))
        if threshold is None:
            raise VolumeError("the model card has no decision threshold: pass --threshold")
        # Scores are |x - x_rec| >= 0: a negative threshold flags the whole box, NaN flags nothing.
        if not (np.isfinite(threshold) and threshold >= 0):
            raise VolumeError(f"{source} must be a finite number >= 0, got {threshold}")
        return float(threshold)

    def levels(self, card: ModelCard) -> tuple[int, ...]:
        return self.t_test or card.config.diffusion.t_test


def quiet(stage: str, fraction: float, message: str = "") -> None:
    pass


def json_progress(stage: str, fraction: float, message: str = "") -> None:
    """One JSON object per line on stdout, read by the Slicer module."""
    print(json.dumps({"stage": stage, "fraction": round(fraction, 4), "message": message}), flush=True)


def text_progress(stage: str, fraction: float, message: str = "") -> None:
    print(f"[{stage:>11}] {100 * fraction:5.1f} % {message}", file=sys.stderr, flush=True)


@torch.no_grad()
def reconstruct(model: DiffusionNet | MaskedLatentNet, card: ModelCard, image: np.ndarray, mask: np.ndarray,
                config: DetectConfig = DetectConfig(), device: torch.device | str = "cpu",
                progress: Progress = quiet) -> np.ndarray:
    """Healthy reconstruction (z, y, x) in 0..1 of a model-space volume (Algorithm 2, batched). With
    several t_test levels, the mean of the reconstructions at each, level i noised from seed + i (so
    one level gives what a model of one level gives). MAD-AD repairs latents instead (repair.py)."""
    device = torch.device(device)
    model_config = card.config
    diffusion = Diffusion(model_config.diffusion)
    patch = model_config.patch
    config.check_reconstruction(card)
    levels = config.levels(card)
    batch = config.batch_size or (512 if device.type == "cuda" else CPU_BATCH)
    if model_config.latent is not None:
        return repair_volume(model, diffusion, image, mask, levels, config.seed, batch, device, progress)
    positions = patch.positions(config.stride)

    x0 = torch.from_numpy(image * 2.0 - 1.0).float().unsqueeze(1)  # (Z, 1, H, W) in [-1, 1]
    extent = patch.patch_extent
    jobs = [(level, z, k) for level in range(len(levels)) for z in range(len(x0))
            for k, (y, x) in enumerate(positions) if mask[z, y:y + extent, x:x + extent].any()]
    xt = torch.stack([diffusion.q_sample(x0, torch.full((len(x0),), t_test),
                                         diffusion.noise_like(x0, torch.Generator().manual_seed(config.seed + i)))
                      for i, t_test in enumerate(levels)])  # (levels, Z, 1, H, W)
    corners = torch.tensor(positions, dtype=torch.long)
    total = torch.zeros_like(xt)
    count = torch.zeros_like(xt)

    def run(begin: int, end: int) -> None:
        chunk = jobs[begin:end]
        level, z = torch.tensor([j[0] for j in chunk]), torch.tensor([j[1] for j in chunk])
        masks = patch_masks(corners[[j[2] for j in chunk]], patch)
        inputs = noised_input(x0[z], xt[level, z], masks).to(device)
        visible = visible_cells(masks, patch.grid).to(device) if model_config.mae is not None else None
        clean = x0[z].to(device) if model_config.encoder is not None else None
        steps = torch.tensor(levels, device=device)[level.to(device)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            prediction = model(inputs, steps, visible, clean=clean).float().cpu()
        total.index_put_((level, z), prediction * masks, accumulate=True)
        count.index_put_((level, z), masks, accumulate=True)

    in_batches(len(jobs), batch, run,
               lambda done, size: progress("reconstruct", done / len(jobs), f"{done}/{len(jobs)} patches, batch {size}"))
    # Overlaps are averaged; pixels no patch touched (no brain nearby) keep their own value.
    rec = torch.where(count > 0, total / count.clamp(min=1), x0)
    if not torch.isfinite(rec).all():
        raise VolumeError("the model's reconstruction has NaN or infinite voxels: its weights are broken")
    members = ((rec.squeeze(2) + 1.0) / 2.0).clamp(0.0, 1.0)  # each level's reconstruction in 0..1
    return members.mean(0).numpy().astype(np.float32)


def anomaly_score(image: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
                  config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """|x0 - x0_rec| in the eroded brain, median filtered (the score the threshold applies to)."""
    return smooth_scores(np.abs(image - reconstruction), mask, config)


def detect_file(path: str | Path, out_dir: str | Path, model: DiffusionNet | MaskedLatentNet, card: ModelCard,
                config: DetectConfig = DetectConfig(), preprocess_config: PreprocessConfig | None = None,
                mask_path: str | Path | None = None, device: torch.device | str = "cpu",
                progress: Progress = quiet) -> dict:
    """Run the whole job on one volume and write ``out_dir/<case>/``; returns the lesion summary."""
    lap = Laps()
    config.check_reconstruction(card)
    threshold = config.decision_threshold(card)
    check_writable(Path(out_dir))
    progress("load", 0.0, str(path))
    native = read_volume(path)
    mask = read_volume(mask_path) if mask_path else None
    lap("load")
    progress("preprocess", 0.0, "registration, brain mask, bias field")
    prep_config = preprocess_config or preprocess_settings(card)
    prepared: Preprocessed = preprocess(native, prep_config, mask=mask,
                                        on_step=lambda step: progress("preprocess", STEPS[step], step))
    lap("preprocess")
    progress("reconstruct", 0.0, f"{card.config.name}, t_test {levels_text(config.levels(card))}")
    rec = reconstruct(model, card, prepared.image, prepared.mask, config, device, progress)
    lap("reconstruct")
    progress("postprocess", 0.0, "scores and lesions")
    record = prepared.record
    score = anomaly_score(prepared.image, rec, prepared.mask)
    model_labels = lesion_labels(score, threshold)
    heat_native = sitk.Cast(to_native(score, record), sitk.sitkFloat32)
    labels_native, table = labels_to_native(model_labels, heat_native, record)
    lap("postprocess")

    progress("write", 0.0, "")
    out = Path(out_dir) / case_name(path)
    low, high = record["intensity_range"]
    # In the input's units, and only where the model saw brain (the rest of the box is not a reconstruction).
    rec_native = sitk.Cast(to_native(np.where(prepared.mask, rec * (high - low) + low, 0.0), record), sitk.sitkFloat32)
    summary = {
        "input": str(path), "model": card.config.name, "threshold": threshold,
        "detect": {**asdict(config), "t_test": list(config.levels(card)),
                   "stride": config.stride or card.config.patch.stride},
        "device": str(device), "lesion_count": len(table), "lesions": table, "timings_s": lap.seconds,
        "score_max": float(score.max()), "warnings": record["warnings"],
    }
    # Strict JSON (no bare NaN); written in the write stage, its timings end with postprocess.
    text = json.dumps(summary, indent=1, allow_nan=False) + "\n"
    with folder_as_a_set(out) as folder:
        write_volume(heat_native, folder / "heatmap.nii.gz")
        write_volume(rec_native, folder / "reconstruction.nii.gz")
        write_volume(labels_native, folder / "lesions.nii.gz")
        grid = record["model_grid"]
        for name, array in (("reconstruction", rec), ("heatmap", score), ("lesions", model_labels.astype(np.uint16))):
            write_volume(image_from_array(array, grid), folder / "model_space" / f"{name}.nii.gz")
        prepared.save(folder / "model_space")  # image, mask and record.json
        write_text_atomic(text, folder / "lesions.json")
    lap("write")
    progress("done", 1.0, str(out))
    return summary


# What describes an input rather than the model's intensity handling: taken from the user (or the
# defaults), never from the training data's settings.
INPUT_SPECIFIC = ("register", "mask_method")


def preprocess_settings(card: ModelCard, **overrides) -> PreprocessConfig:
    """The preprocessing the model was trained with, with the user's overrides (None = keep). An
    atlas the card names must lie in the model's folder or the bundled resources; the user's own
    (``atlas=``) is taken as given."""
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in card.preprocessing.items()
                if k not in INPUT_SPECIFIC}
    if overrides.get("atlas") is None and settings.get("atlas"):
        settings["atlas"] = str(card_atlas(settings["atlas"], card.folder))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return PreprocessConfig(**settings)


def load_for_detection(path: str | Path, device: torch.device | str,
                       ) -> tuple[DiffusionNet | MaskedLatentNet, ModelCard]:
    model, card = load_model(path, device)
    if torch.device(device).type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # ~20 % faster convolutions on CPU
    return model, card
