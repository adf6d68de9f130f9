"""Detection: a model's healthy reconstruction of a volume (its method's, methods/, on torch or ONNX
Runtime: runtime.py), anomaly scores and lesions, written on the input's own grid and in model space.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atlas import Atlas, card_atlas
from .diffusion_config import check_levels, levels_text
from .errors import CardError, InputError, OptionError
from .files import case_name, check_writable, folder_as_a_set, write_text_atomic
from .input_check import check_input
from .methods import method_of
from .methods.base import Progress, Sampling
from .modelfile import ModelCard
from .modelfile.card import OPERATING_POINTS
from .postprocess import PostprocessConfig, lesion_labels, smooth_scores
from .preprocess import STEPS, PreprocessConfig, Preprocessed, preprocess, to_native
from .runtime import Runtime
from .scoring import ScoringConfig, score_map
from .timing import Laps
from .volume_io import image_from_array, read_volume, write_volume
from .writeback import labels_to_native


@dataclass(frozen=True)
class DetectConfig:
    t_test: tuple[int, ...] | None = None  # None: the model's (MAEDiff paper: 500; cDDPM: 250, 500, 750)
    stride: int | None = None  # None: the model's (MAEDiff: 16)
    batch_size: int | None = None  # None: the runtime's (runtime.CPU_BATCH; torch_runtime.GPU_BATCH on CUDA)
    threshold: float | None = None  # None: the threshold of the operating point
    seed: int = 0  # the noise of the reconstruction(s)
    scoring: ScoringConfig | None = None  # None: the model card's
    operating_point: str | None = None  # protocol | reading; None: the card's (ModelCard.operating_point)

    def check_reconstruction(self, card: ModelCard) -> None:
        """Refuse reconstruction settings that cannot hold for this model (before any heavy work)."""
        for name in ("stride", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"{name.replace('_', '-')} must be a positive integer, got {value} "
                                  "(leave it out for the model's own)")
        config = card.config
        if self.operating_point is not None and self.operating_point not in OPERATING_POINTS:
            raise OptionError(f"the operating point is one of {', '.join(OPERATING_POINTS)}, "
                              f"got {self.operating_point!r}")
        if self.point(card) == "reading" and card.reading is None:
            raise OptionError("this model card has no reading operating point: leave out --operating-point, or "
                              "choose one with `maediff evaluate --save-threshold --healthy ...`")
        try:
            if self.t_test is not None:
                check_levels(self.t_test, config.diffusion.timesteps)
            config.patch.positions(self.stride)
            method_of(config.method).check_sampling(config, self.stride or config.patch.stride)
        except ValueError as err:
            raise OptionError(str(err)) from None

    def sampling(self, card: ModelCard, runtime: Runtime) -> Sampling:
        """The reconstruction these settings draw with this model on ``runtime``."""
        self.check_reconstruction(card)
        return Sampling(levels=self.levels(card), stride=self.stride or card.config.patch.stride, seed=self.seed,
                        batch=self.batch_size or runtime.batch, samples=self.scoring_of(card).samples)

    def scoring_of(self, card: ModelCard) -> ScoringConfig:
        return self.scoring or card.scoring

    def point(self, card: ModelCard) -> str:
        """The operating point these settings use: the one asked for, else the card's."""
        return self.operating_point or card.operating_point

    def lesion_config(self, card: ModelCard) -> PostprocessConfig:
        """The post-processing of the operating point: its smallest lesion."""
        if self.point(card) == "reading":
            return PostprocessConfig(min_component_voxels=int(card.reading["min_voxels"]))
        return PostprocessConfig()

    def decision_threshold(self, card: ModelCard) -> float:
        """The given threshold, else the operating point's; refused unless a finite number >= 0, and
        unless given where the scoring is not the card's (a threshold holds for the scores it was chosen on)."""
        if self.scoring not in (None, card.scoring) and self.threshold is None:
            raise OptionError(f"the card's threshold holds for its scoring ({card.scoring.label}): pass --threshold "
                              f"with --scoring {self.scoring.label}")
        reading = self.point(card) == "reading"
        card_threshold = card.reading["threshold"] if reading else card.threshold
        threshold, source = ((self.threshold, "--threshold") if self.threshold is not None
                             else (card_threshold, f"the model card's {'reading ' if reading else ''}threshold"))
        if threshold is None:
            raise CardError("the model card has no decision threshold: pass --threshold")
        # Scores are |x - x_rec| >= 0: a negative threshold flags the whole box, NaN flags nothing.
        if not (np.isfinite(threshold) and threshold >= 0):
            error = OptionError if self.threshold is not None else CardError
            raise error(f"{source} must be a finite number >= 0, got {threshold}")
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


def reconstruct_samples(runtime: Runtime, card: ModelCard, image: np.ndarray, mask: np.ndarray,
                        config: DetectConfig = DetectConfig(), progress: Progress = quiet) -> np.ndarray:
    """The healthy reconstructions (samples, z, y, x) in 0..1 of a model-space volume that the
    scoring takes (one for ``residual``), by the model's method on ``runtime``."""
    sampling = config.sampling(card, runtime)
    return method_of(card.config.method).reconstruct(runtime, card.config, image, mask, sampling, progress)


def reconstruct(runtime: Runtime, card: ModelCard, image: np.ndarray, mask: np.ndarray,
                config: DetectConfig = DetectConfig(), progress: Progress = quiet) -> np.ndarray:
    """The healthy reconstruction (z, y, x) in 0..1: the mean of the scoring's reconstructions."""
    return reconstruct_samples(runtime, card, image, mask, config, progress).mean(0)


def anomaly_score(image: np.ndarray, samples: np.ndarray, mask: np.ndarray, scoring: ScoringConfig = ScoringConfig(),
                  config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """The score the threshold applies to: the scoring's map of ``samples`` (samples, z, y, x; or one
    reconstruction, z, y, x) in the eroded brain, median filtered."""
    samples = samples[None] if samples.ndim == 3 else samples
    return smooth_scores(score_map(image, samples, mask, scoring), mask, config)


def detect_file(path: str | Path, out_dir: str | Path, runtime: Runtime, card: ModelCard,
                config: DetectConfig = DetectConfig(), preprocess_config: PreprocessConfig | None = None,
                mask_path: str | Path | None = None, progress: Progress = quiet, force: bool = False,
                series: str | None = None) -> dict:
    """Run the whole job on one volume and write ``out_dir/<case>/``; returns the lesion summary. An
    input of a contrast the model was never trained on is refused before reconstruction unless ``force``;
    ``series`` picks one series of a DICOM folder that holds several."""
    lap = Laps()
    config.check_reconstruction(card)
    threshold = config.decision_threshold(card)
    check_writable(Path(out_dir))
    progress("load", 0.0, str(path))
    read_warnings: list[str] = []  # what the input's header leaves to a guess
    native = read_volume(path, read_warnings, series)
    mask = read_volume(mask_path) if mask_path else None
    lap("load")
    progress("preprocess", 0.0, "registration, brain mask, bias field")
    prep_config = preprocess_config or preprocess_settings(card)
    prepared: Preprocessed = preprocess(native, prep_config, mask=mask,
                                        on_step=lambda step: progress("preprocess", STEPS[step], step))
    contrast, input_warnings = check_input(prepared, card.inputs, Atlas.load(prep_config.atlas), force)
    lap("preprocess")
    scoring = config.scoring_of(card)
    progress("reconstruct", 0.0, f"{card.config.name}, t_test {levels_text(config.levels(card))}, {scoring.label}")
    samples = reconstruct_samples(runtime, card, prepared.image, prepared.mask, config, progress)
    rec = samples.mean(0)
    lap("reconstruct")
    progress("postprocess", 0.0, "scores and lesions")
    record = prepared.record
    record["warnings"] = [*read_warnings, *record["warnings"], *input_warnings]
    record["input_check"] = {"contrast": contrast and contrast.to_dict(), "spacing_mm": list(native.GetSpacing())}
    score = anomaly_score(prepared.image, samples, prepared.mask, scoring)
    lesion_config = config.lesion_config(card)
    model_labels = lesion_labels(score, threshold, lesion_config)
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
        "operating_point": config.point(card), "min_lesion_voxels": lesion_config.min_component_voxels,
        "detect": {**asdict(config), "t_test": list(config.levels(card)),
                   "stride": config.stride or card.config.patch.stride, "scoring": asdict(scoring)},
        "runtime": runtime.name, "device": runtime.device, "lesion_count": len(table), "lesions": table,
        "timings_s": lap.seconds,
        "score_max": float(score.max()), "input_check": record["input_check"], "warnings": record["warnings"],
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


# The screening's preprocessing: the registration's two coarse levels on a 2 mm copy, no bias correction
# or smoothing. An uncorrected bias field is what the benchmark's bias-field shift simulates, and the
# contrast check accepts every T2 volume under it; the 2 mm copy took a third of the 1 mm copy's time,
# as close to the true pose, and moved the contrasts by 0.05 at most (docs/input-checks.md).
SCREEN = {"bias_correction": False, "smoothing": False, "registration_shrink": (8, 4),
          "registration_smoothing_mm": (4.0, 2.0), "registration_mm": 2.0}


def screen_file(path: str | Path, card: ModelCard, preprocess_config: PreprocessConfig,
                mask_path: str | Path | None = None, series: str | None = None) -> dict:
    """What ``maediff detect --check`` reports of one input without detecting: readable, its spacing, its
    tissue contrast and the warnings detection would give; ``refused`` says why detection would refuse
    it (None: it would run)."""
    warnings: list[str] = []
    native = read_volume(path, warnings, series)
    mask = read_volume(mask_path) if mask_path else None
    prepared = preprocess(native, replace(preprocess_config, **SCREEN), mask=mask)
    result = {"input": str(path), "spacing_mm": [round(v, 3) for v in native.GetSpacing()], "refused": None}
    try:
        contrast, found = check_input(prepared, card.inputs, Atlas.load(preprocess_config.atlas))
        result["contrast"] = contrast and contrast.to_dict()
    except InputError as err:
        result["refused"], found = str(err), []
    result["warnings"] = [*warnings, *prepared.record["warnings"], *found]
    return result


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

