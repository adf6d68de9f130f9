"""The model card: everything about a trained model except its weights, as the JSON beside them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import CardError
from ..methods import method_of
from ..methods.base import ModelConfig
from ..preprocess_config import PreprocessConfig
from ..scoring import ScoringConfig
from .parsing import parse_config, parse_model_config, parse_value

FORMAT_VERSION = 1
# Refused before a network is built (store.load_model): about 3x the paper-size MAD-AD (348 M, the
# largest configuration here).
MAX_PARAMETERS = 1_000_000_000
KNOWN_ENTRIES = ("format_version", "config", "threshold", "scoring", "reading", "preprocessing", "training",
                 "inputs", "description", "intended_use", "metrics", "onnx", "weights_sha256")
OPERATING_POINTS = ("protocol", "reading")


@dataclass
class ModelCard:
    config: ModelConfig
    threshold: float | None = None  # decision threshold on the post-processed score
    preprocessing: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    description: str = ""
    # The method's extra weight files (Method.extra_weights): name -> {"weights": path from the
    # card's folder, "sha256": ...}; a card stores each under its name.
    extra_weights: dict[str, dict] = field(default_factory=dict)
    # What was measured with the model, by name: {"sample": {"data": ..., "n": 1, "dice": {"mean": ...,
    # "std": ...}, ..., "command": the command that measured it}}.
    metrics: dict[str, dict] = field(default_factory=dict)
    # How the anomaly map is made from reconstructions; ``threshold`` holds for it.
    scoring: ScoringConfig = ScoringConfig()
    # The operating point for reading: {"threshold": ..., "min_voxels": ..., "chosen_on": {...}}, chosen
    # on healthy validation volumes for a number of false alarms (``threshold`` is the protocol's).
    reading: dict | None = None
    intended_use: str = ""  # who may use it for what, in words (publish --intended-use)
    # What the training volumes were like, for the input checks: {"contrast": {"csf_wm": [low, high], ...}
    # (contrast.py), "slice_mm": [low, high]} (their largest voxel spacing).
    inputs: dict = field(default_factory=dict)
    # The networks detection runs, exported (modelfile/onnx_export.py): name -> {"file": path from the
    # card's folder, "sha256", "opset", "inputs": [names], "outputs": [names], "parity": the largest
    # |ONNX Runtime - torch| on the export's example inputs}.
    onnx: dict[str, dict] = field(default_factory=dict)
    folder: Path | None = field(default=None, compare=False, repr=False)  # where it was read from

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "config": self.config.to_dict(), "threshold": self.threshold,
                "scoring": asdict(self.scoring), "reading": self.reading, "preprocessing": self.preprocessing,
                "training": self.training, "inputs": self.inputs, "description": self.description,
                "intended_use": self.intended_use, "metrics": self.metrics, "onnx": self.onnx, **self.extra_weights}

    @property
    def operating_point(self) -> str:
        """The point detection uses unless told: reading where the card has one."""
        return "reading" if self.reading is not None else "protocol"

    @property
    def score(self) -> str:
        """What the anomaly score compares."""
        return method_of(self.config.method).score

    def extra_weight_path(self, name: str) -> Path:
        """The file of extra weight ``name``, once known to be the one the card names."""
        reference = self.extra_weights[name]
        return self._verified(reference["weights"], reference["sha256"], f"the {name} weights", f"the {name} was "
                              "retrained or replaced after this model was trained on it")

    def onnx_path(self, name: str) -> Path:
        """The exported network ``name``, once known to be the file the card names."""
        entry = self.onnx[name]
        return self._verified(entry["file"], entry["sha256"], f"the exported {name}", "exported again or damaged "
                              "after the card was written: `maediff export-onnx` on the card writes both again")

    def _verified(self, file: str, sha256: str, what: str, mismatch: str) -> Path:
        from .pairs import sha256_of

        path = self.folder / file
        if not path.is_file():
            raise CardError(f"{path}: {what} named by the model card not found (a {self.config.method} model is its "
                            "card and every file it names; copy all of them)")
        if sha256_of(path) != sha256:
            raise CardError(f"{path}: does not match the model card ({mismatch})")
        return path

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        """From JSON, validated: the configuration (types, ranges, size), the threshold, the
        preprocessing settings and the extra weights' references."""
        if not isinstance(data, dict) or "config" not in data:
            raise CardError("no 'config' object")
        config = parse_model_config(data["config"])
        threshold = data.get("threshold")
        if threshold is not None:
            threshold = parse_value(float, threshold, "threshold")
            if threshold < 0:
                raise CardError(f"threshold: must be >= 0, got {threshold}")
        preprocessing = data.get("preprocessing", {})
        parse_config(PreprocessConfig, preprocessing, "preprocessing")
        training, description, metrics = data.get("training", {}), data.get("description", ""), data.get("metrics", {})
        intended_use = data.get("intended_use", "")
        if not isinstance(training, dict) or not isinstance(description, str) or not isinstance(intended_use, str):
            raise CardError("'training' must be an object, 'description' and 'intended_use' strings")
        if not (isinstance(metrics, dict) and all(isinstance(m, dict) for m in metrics.values())):
            raise CardError("'metrics': expected an object of measurements, each an object")
        method = method_of(config.method)
        if training.get("stage", None) != method.stages(config)[-1].name:
            raise CardError(f"this is a run's {training['stage']} stage, not a model: use the run's best.json")
        # Cards written before the method registry name every method's extra weights, null where none.
        unknown = [k for k, v in data.items() if k not in KNOWN_ENTRIES + method.extra_weights and v is not None]
        if unknown:
            raise CardError(f"{unknown[0]!r}: not an entry of a {config.method} model's card")
        extra = {name: check_reference(name, data.get(name)) for name in method.extra_weights}
        scoring = parse_config(ScoringConfig, data.get("scoring") or {}, "scoring")  # before scorings: residual
        return cls(config, threshold, preprocessing, training, description, extra, metrics, scoring,
                   check_reading(data.get("reading")), intended_use, check_inputs(data.get("inputs") or {}),
                   check_onnx(data.get("onnx") or {}, method.graph_names))


def check_reading(reading) -> dict | None:
    """A card's reading operating point: a threshold >= 0 and a smallest lesion of >= 1 voxel."""
    if reading is None:
        return None
    if not isinstance(reading, dict):
        raise CardError(f"reading: expected an object, got {reading!r}")
    threshold = parse_value(float, reading.get("threshold"), "reading.threshold")
    voxels = parse_value(int, reading.get("min_voxels"), "reading.min_voxels")
    if threshold < 0 or voxels < 1:
        raise CardError(f"reading: needs a threshold >= 0 and min_voxels >= 1, got {threshold}, {voxels}")
    return reading


def check_inputs(inputs) -> dict:
    """A card's ranges of the training inputs: each a [low, high] pair of numbers."""
    if not isinstance(inputs, dict) or not isinstance(inputs.get("contrast", {}), dict):
        raise CardError(f"inputs: expected {{\"contrast\": {{...}}, \"slice_mm\": [low, high]}}, got {inputs!r}")
    ranges = {f"contrast.{k}": v for k, v in inputs.get("contrast", {}).items()}
    if "slice_mm" in inputs:
        ranges["slice_mm"] = inputs["slice_mm"]
    for name, pair in ranges.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int | float) for v in pair)
                and pair[0] <= pair[1]):
            raise CardError(f"inputs.{name}: expected [low, high], got {pair!r}")
    return inputs


ONNX_ENTRY = {"file": str, "sha256": str, "opset": int, "inputs": list, "outputs": list, "parity": float}


def check_onnx(onnx, names: tuple[str, ...]) -> dict:
    """A card's exported networks: none, or one entry per network the method runs, each a .onnx file
    inside the card's folder with its hash, opset, input and output names and parity."""
    if not isinstance(onnx, dict) or (onnx and set(onnx) != set(names)):
        raise CardError(f"onnx: expected an entry for each of {', '.join(names)}, got {onnx!r}")
    for name, entry in onnx.items():
        if not (isinstance(entry, dict) and set(entry) == set(ONNX_ENTRY)
                and all(isinstance(entry[k], kind) for k, kind in ONNX_ENTRY.items())):
            raise CardError(f"onnx.{name}: expected {{{', '.join(ONNX_ENTRY)}}}, got {entry!r}")
        path = Path(entry["file"])
        if path.is_absolute() or ".." in path.parts or path.suffix != ".onnx":
            raise CardError(f"onnx.{name}: {entry['file']!r} must be a .onnx file inside the model's folder")
    return onnx


def check_reference(name: str, reference) -> dict:
    """A card's reference to an extra weight file: a file inside the card's folder, and its SHA-256."""
    if reference is None:
        raise CardError(f"the model names its {name}'s weights ('{name}')")
    if (not isinstance(reference, dict) or set(reference) != {"weights", "sha256"}
            or not all(isinstance(v, str) for v in reference.values())):
        raise CardError(f"'{name}': expected {{\"weights\": ..., \"sha256\": ...}}, got {reference!r}")
    path = Path(reference["weights"])
    if path.is_absolute() or ".." in path.parts or path.suffix != ".safetensors":
        raise CardError(f"'{name}': {reference['weights']!r} must be a .safetensors file inside the model's folder")
    return reference


def with_operating_point(card: ModelCard, threshold: float, t_test: tuple[int, ...], stride: int,
                         chosen_on: dict, scoring: ScoringConfig | None = None,
                         reading: dict | None = None) -> ModelCard:
    """The card with a decision threshold and the reconstruction and scoring it was chosen for (a
    threshold holds only for the t_test, stride and scoring that made the scores), and the reading
    operating point chosen with it (none: an earlier one no longer holds); ``chosen_on`` describes
    the data."""
    config = replace(card.config, diffusion=replace(card.config.diffusion, t_test=t_test),
                     patch=replace(card.config.patch, stride=stride))
    return replace(card, config=config, threshold=threshold, scoring=scoring or card.scoring, reading=reading,
                   training={**card.training, "threshold_from": chosen_on})
