"""Named method configurations and the model file format (safetensors weights + JSON card).

Loading never unpickles: weights come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .conditioning import EncoderConfig
from .diffusion import DiffusionConfig, PatchConfig, levels_text
from .files import VolumeError, atomic_path, write_text_atomic
from .latent import AutoencoderConfig, LatentConfig, MaskedLatentNet
from .networks import DiffusionNet, MAEConfig, UNetConfig
from .preprocess_config import PreprocessConfig

FORMAT_VERSION = 1
METHODS = ("maediff", "pddpm", "anoddpm", "cddpm", "madad")
# Refused before any memory is taken: about 3x the paper-size MAD-AD (348 M, the largest configuration here).
MAX_PARAMETERS = 1_000_000_000


@dataclass(frozen=True)
class ModelConfig:
    name: str
    method: str  # maediff | pddpm | anoddpm | cddpm | madad
    unet: UNetConfig = UNetConfig()
    mae: MAEConfig | None = None
    patch: PatchConfig = PatchConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    encoder: EncoderConfig | None = None  # cDDPM: the encoder of the clean slice
    latent: LatentConfig | None = None  # MAD-AD: the autoencoder, and the masking of its latents

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if (self.method == "cddpm") != (self.encoder is not None):
            raise ValueError("a cddpm configuration needs an encoder, and only cddpm has one")
        if (self.method == "madad") != (self.latent is not None):
            raise ValueError("a madad configuration needs a latent configuration, and only madad has one")
        if self.latent is not None and (self.mae is not None or not self.patch.whole_slice):
            raise ValueError("MAD-AD works on the whole slice's latent: no MAE module, whole_slice true")
        self.patch.positions()  # the stride tiles the slice
        if self.mae is not None and self.patch.size % (4 * self.mae.cell):
            raise ValueError(f"mae.cell {self.mae.cell} does not tile the {self.patch.size // 4}-pixel feature map")

    def build(self) -> DiffusionNet | MaskedLatentNet:
        if self.latent is not None:
            return MaskedLatentNet(self.unet, self.latent, self.patch.size)
        return DiffusionNet(self.unet, self.mae, self.patch.size, self.encoder)

    def parameter_count(self) -> int:
        """Parameters of :meth:`build`, counted on the meta device (no memory taken)."""
        with torch.device("meta"):
            return sum(p.numel() for p in self.build().parameters())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """From JSON, every value checked against its declared type and range."""
        diffusion = data.get("diffusion") if isinstance(data, dict) else None
        if isinstance(diffusion, dict) and isinstance(diffusion.get("t_test"), int):
            # Cards written before ensembles hold one level.
            data = {**data, "diffusion": {**diffusion, "t_test": [diffusion["t_test"]]}}
        return parse_config(cls, data, "config")


def _parse_value(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _parse_value(next(a for a in args if a is not type(None)), value, where)
    if is_dataclass(hint):
        return parse_config(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise VolumeError(f"{where}: expected a list, got {value!r}")
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            raise VolumeError(f"{where}: expected {len(kinds)} values, got {len(value)}")
        return tuple(_parse_value(k, v, f"{where}[{i}]") for i, (k, v) in enumerate(zip(kinds, value)))
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is float and numeric and math.isfinite(value):
        return float(value)
    if (hint is int and numeric and value == int(value)) or (hint in (bool, str) and isinstance(value, hint)):
        return hint(value)
    expected = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string"}
    raise VolumeError(f"{where}: expected {expected.get(hint, hint)}, got {value!r}")


def parse_config(cls, data, where: str):
    """A configuration dataclass from JSON: unknown keys, wrong types, non-finite numbers and values
    out of range are refused with the key's path (``config.unet.channels[0]: ...``)."""
    if not isinstance(data, dict):
        raise VolumeError(f"{where}: expected an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise VolumeError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    values = {key: _parse_value(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise VolumeError(f"{where}: {err}") from None


# A CPU-sized U-Net that keeps every part (REFERENCE.md, "Measured": 32/64/64, 2 res blocks).
_SMALL_UNET = UNetConfig(channels=(32, 64, 64), res_blocks=2, head_channels=32)
_SMALL_MAE = MAEConfig(encoder_depth=4, encoder_width=128, encoder_heads=4,
                       decoder_depth=4, decoder_width=128, decoder_heads=4)
_NO_ATTENTION = (False, False, False)  # pDDPM / AnoDDPM / cDDPM: attention only in the middle block
# ResNet-18's basic blocks, one per stage at a quarter of its widths; the condition keeps the
# reference's rule, U-Net width x 4.
_SMALL_ENCODER = EncoderConfig(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), features=128)
# The autoencoder's first level, at full resolution, is most of its cost: 16 channels and one block
# there take 0.34 s per training batch of 16 on 2 cores against 1.1-1.5 s at 32 (without the middle
# attention, which this one keeps: 0.58 M parameters). Downsampling 4 (a 24 x 24 latent) against 8:
# validation L1 0.105 against 0.141 on the model's [-1, 1] after 3 CPU minutes each (README).
_SMALL_LATENT = LatentConfig(AutoencoderConfig(channels=(16, 32, 64), res_blocks=1, norm_groups=16))

CONFIGS: dict[str, ModelConfig] = {
    "maediff": ModelConfig("maediff", "maediff", mae=MAEConfig()),
    "pddpm-s48": ModelConfig("pddpm-s48", "pddpm", UNetConfig(attention=_NO_ATTENTION), patch=PatchConfig(stride=48)),
    "pddpm-s16": ModelConfig("pddpm-s16", "pddpm", UNetConfig(attention=_NO_ATTENTION)),
    "anoddpm": ModelConfig("anoddpm", "anoddpm", UNetConfig(attention=_NO_ATTENTION), patch=PatchConfig(whole_slice=True)),
    # cDDPM code (REFERENCE.md): the whole slice noised, cosine schedule, x0 at t = 250, 500, 750 averaged.
    "cddpm": ModelConfig("cddpm", "cddpm", UNetConfig(attention=_NO_ATTENTION), patch=PatchConfig(whole_slice=True),
                         diffusion=DiffusionConfig(schedule="cosine", t_test=(250, 500, 750)),
                         encoder=EncoderConfig()),
    # MAD-AD code (REFERENCE.md): U-Net 256 x (1, 2, 4), 2 blocks, attention at every level; T = 10,
    # cosine schedule, Gaussian noise; detection runs all 10 DDIM steps from the input's latent.
    "madad": ModelConfig("madad", "madad", UNetConfig(channels=(256, 512, 1024), res_blocks=2, attention=(True,) * 3),
                         patch=PatchConfig(whole_slice=True), latent=LatentConfig(),
                         diffusion=DiffusionConfig(timesteps=10, schedule="cosine", noise="gaussian", t_test=(10,))),
}
for _name, _config in list(CONFIGS.items()):
    # Attention over the 48 x 48 map (2304 tokens) is half of a small net's FLOPs (15.2 -> 8.1
    # GFLOP for maediff-small): the small nets keep it at 24 x 24 only. MAD-AD's U-Net works on the
    # latent, 24 x 24 at most, and keeps attention everywhere.
    _attention = _config.unet.attention if _config.latent else (False, False, _config.unet.attention[-1])
    CONFIGS[f"{_name}-small"] = replace(_config, name=f"{_name}-small", unet=replace(_SMALL_UNET, attention=_attention),
                                        mae=_SMALL_MAE if _config.mae else None,
                                        encoder=_SMALL_ENCODER if _config.encoder else None,
                                        latent=_SMALL_LATENT if _config.latent else None)
SMALL_CONFIGS = frozenset(name for name in CONFIGS if name.endswith("-small"))  # CPU-sized: train.CPU_RECIPE


def get_config(name: str) -> ModelConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose one of {', '.join(CONFIGS)}")
    return CONFIGS[name]


@dataclass
class ModelCard:
    """Everything about a trained model except its weights."""

    config: ModelConfig
    threshold: float | None = None  # decision threshold on the post-processed score
    preprocessing: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    description: str = ""
    # MAD-AD: its autoencoder's weight file, {"weights": path from the card's folder, "sha256": ...}
    autoencoder: dict | None = None
    folder: Path | None = field(default=None, compare=False, repr=False)  # where it was read from

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "config": self.config.to_dict(), "threshold": self.threshold,
                "preprocessing": self.preprocessing, "training": self.training, "description": self.description,
                "autoencoder": self.autoencoder}

    @property
    def score(self) -> str:
        """What the anomaly score compares."""
        if self.config.latent is not None:
            return "|decode(repaired latent) - decode(latent)|, the change MAD-AD's repair makes"
        return "|input - reconstruction|"

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        """From JSON, validated: the configuration (types, ranges, size), the threshold and the
        preprocessing settings, so that a broken card fails in seconds and not after preprocessing."""
        if not isinstance(data, dict) or "config" not in data:
            raise VolumeError("no 'config' object")
        config = ModelConfig.from_dict(data["config"])
        parameters = config.parameter_count()
        if parameters > MAX_PARAMETERS:
            raise VolumeError(f"configuration {config.name!r} has {parameters / 1e6:.0f} M parameters "
                              f"({4 * parameters / 1e9:.1f} GB); the limit is {MAX_PARAMETERS / 1e6:.0f} M")
        threshold = data.get("threshold")
        if threshold is not None:
            threshold = _parse_value(float, threshold, "threshold")
            if threshold < 0:
                raise VolumeError(f"threshold: must be >= 0, got {threshold}")
        preprocessing = data.get("preprocessing", {})
        parse_config(PreprocessConfig, preprocessing, "preprocessing")
        training, description = data.get("training", {}), data.get("description", "")
        if not isinstance(training, dict) or not isinstance(description, str):
            raise VolumeError("'training' must be an object and 'description' a string")
        if training.get("stage") == "encoder":
            raise VolumeError("this is a run's encoder pre-training stage, not a model: use the run's best.json")
        autoencoder = data.get("autoencoder")
        if config.latent is not None:
            check_part(autoencoder, training)
        elif autoencoder is not None:
            raise VolumeError("'autoencoder': only a MAD-AD model has one")
        return cls(config, threshold, preprocessing, training, description, autoencoder)


def check_part(part, training: dict) -> None:
    """A MAD-AD card's reference to its autoencoder: a file inside the card's folder, and its SHA-256."""
    if part is None:
        stage = " (this is a run's autoencoder stage: use the run's best.json)" if training.get("stage") == "autoencoder" else ""
        raise VolumeError(f"a MAD-AD model names its autoencoder's weights ('autoencoder'){stage}")
    if (not isinstance(part, dict) or set(part) != {"weights", "sha256"}
            or not all(isinstance(v, str) for v in part.values())):
        raise VolumeError(f"'autoencoder': expected {{\"weights\": ..., \"sha256\": ...}}, got {part!r}")
    path = Path(part["weights"])
    if path.is_absolute() or ".." in path.parts or path.suffix != ".safetensors":
        raise VolumeError(f"'autoencoder': {part['weights']!r} must be a .safetensors file inside the model's folder")


def with_operating_point(card: ModelCard, threshold: float, t_test: tuple[int, ...], stride: int,
                         chosen_on: dict) -> ModelCard:
    """The card with a decision threshold and the reconstruction it was chosen for (a threshold
    holds only for the t_test and stride that made the scores); ``chosen_on`` describes the data."""
    config = replace(card.config, diffusion=replace(card.config.diffusion, t_test=t_test),
                     patch=replace(card.config.patch, stride=stride))
    config.patch.positions()  # the stride must tile the slice
    return replace(card, config=config, threshold=threshold, training={**card.training, "threshold_from": chosen_on})


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``x.safetensors`` and ``x.json`` for any of ``x``, ``x.safetensors`` or ``x.json``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pending(meta: Path) -> Path:
    return meta.with_name(f".{meta.name}.pending")


def save_pair(tensors: dict[str, torch.Tensor], record: dict, path: str | Path) -> Path:
    """Weights and their JSON as one commit. The JSON names the weights' SHA-256 and is first written
    aside (``.x.json.pending``); the weights are renamed into place, then the JSON. A kill at any
    point leaves the old pair or the new one once :func:`recover_pair` has run, never a mix."""
    weights, meta = model_paths(path)
    recover_pair(path)
    with atomic_path(weights) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        write_text_atomic(json.dumps({**record, "weights_sha256": sha256_of(tmp)}, indent=1) + "\n", _pending(meta))
    os.replace(_pending(meta), meta)
    return weights


def recover_pair(path: str | Path) -> None:
    """Finish or undo a :func:`save_pair` that a kill interrupted, and sweep its temporary files."""
    weights, meta = model_paths(path)
    pending = _pending(meta)
    if pending.is_file():
        try:
            digest = json.loads(pending.read_text()).get("weights_sha256")
        except (json.JSONDecodeError, AttributeError):
            digest = None
        if weights.is_file() and digest == sha256_of(weights):
            os.replace(pending, meta)  # the new weights were in place: complete the pair
        else:
            pending.unlink()  # killed before the weights' rename: the old pair stands
    for leftover in [*meta.parent.glob(f".{weights.name}.*"), *meta.parent.glob(f".{meta.name}.*"),
                     *meta.parent.glob(f".{pending.name}.*")]:
        leftover.unlink(missing_ok=True)


def save_model(model: torch.nn.Module, card: ModelCard, path: str | Path) -> Path:
    return save_pair(model.state_dict(), card.to_dict(), path)


def _read_json(meta: Path) -> dict:
    if not meta.is_file():
        raise VolumeError(f"{meta}: model card not found (a model is a .safetensors + .json pair)")
    try:
        record = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VolumeError(f"{meta}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise VolumeError(f"{meta}: not a model card (a JSON object)")
    return record


def _verified(weights: Path, meta: Path, record: dict) -> Path:
    """``weights``, once known to be the file ``record`` was written with (its SHA-256; older cards
    without one are taken as they are)."""
    if not weights.is_file():
        raise VolumeError(f"{weights}: model weights not found")
    expected = record.get("weights_sha256")
    if expected is not None and sha256_of(weights) != expected:
        hint = (" (a save was interrupted: `maediff train` on its folder completes it)" if _pending(meta).is_file()
                else " (damaged or replaced; copy the pair again)")
        raise VolumeError(f"{weights}: does not match {meta.name}{hint}")
    return weights


def _card(meta: Path, record: dict) -> ModelCard:
    try:
        return replace(ModelCard.from_dict(record), folder=meta.parent)
    except VolumeError as err:
        raise VolumeError(f"{meta}: not a valid model card: {err}") from None


def read_pair(path: str | Path) -> tuple[Path, dict]:
    """The verified weights' path and the JSON beside them."""
    weights, meta = model_paths(path)
    record = _read_json(meta)
    return _verified(weights, meta, record), record


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
        parts = [autoencoder_weights(replace(card, folder=meta.parent))] if card.autoencoder else []
        write_text_atomic(card_markdown(card, sum(p.stat().st_size for p in [weights, *parts]) / 1e6), markdown)
    return meta


def load_card(path: str | Path) -> ModelCard:
    meta = model_paths(path)[1]
    return _card(meta, _read_json(meta))


def load_weights(weights: Path, model: torch.nn.Module, device: torch.device | str, prefix: str = "") -> dict:
    """Tensors of ``weights`` into ``model``, their names and shapes checked against it from the file's
    header before any data is read; returns the file's other tensors (those not under ``prefix``)."""
    expected = {f"{prefix}{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as handle:
            found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise VolumeError(f"{weights}: cannot read weights ({err})") from None
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in set(found) - set(expected) if k.startswith(prefix))
    wrong = [f"{k} {found[k]} (expected {expected[k]})" for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        raise VolumeError(f"{weights}: weights do not fit the configuration (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]})")
    try:
        tensors = load_file(str(weights), device=str(device))
    except Exception as err:
        raise VolumeError(f"{weights}: cannot read weights ({err})") from None
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # a diverged run: every reconstruction would be NaN
        raise VolumeError(f"{weights}: {len(broken)} tensor(s) hold NaN or infinite values ({broken[0]}, ...)")
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k in expected})
    return {k: v for k, v in tensors.items() if k not in expected}


def autoencoder_weights(card: ModelCard) -> Path:
    """A MAD-AD model's autoencoder file, once known to be the one its card names."""
    path = card.folder / card.autoencoder["weights"]
    if not path.is_file():
        raise VolumeError(f"{path}: the autoencoder weights named by the model card are not found "
                          "(a MAD-AD model is its card, its weights and these; copy all three)")
    if sha256_of(path) != card.autoencoder["sha256"]:
        raise VolumeError(f"{path}: does not match the model card (the autoencoder was retrained or replaced "
                          "after this model was trained on it)")
    return path


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[DiffusionNet | MaskedLatentNet, ModelCard]:
    weights, meta = model_paths(path)
    record = _read_json(meta)  # read once: the card, then the weights it names by hash
    card = _card(meta, record)
    _verified(weights, meta, record)
    model = card.config.build()
    if card.autoencoder is not None:
        load_weights(weights, model.denoiser, device)
        load_weights(autoencoder_weights(card), model.autoencoder, device)
    else:
        load_weights(weights, model, device)
    return model.to(device).eval(), card


IXI_RECIPE = """\
maediff prepare /data/IXI-T2 -o data/ixi --workers 8          # IXI*-T2.nii.gz, flat folder
maediff prepare /data/BraTS2021 -o data/brats21 --workers 8   # BraTS2021_*/..._t2.nii.gz + _seg
maediff train --data data/ixi --config maediff -o runs/maediff   # paper settings; resumes if stopped
maediff evaluate --model runs/maediff/best.json --val data/brats21 --test data/brats21 \\
    --healthy data/ixi --use-splits --save-threshold -o eval/maediff-brats21
maediff publish runs/maediff/best.json -o models/maediff-ixi --description "MAEDiff trained on IXI T2"
"""


def card_markdown(card: ModelCard, weights_mb: float) -> str:
    """The human-readable model card, written from the JSON card."""
    t, c = card.training, card.config
    lines = [f"# Model card: {c.name}", "", card.description or "(no description)", ""]
    if t.get("synthetic_data"):
        lines += ["**Trained on synthetic data.** The training volumes are phantoms generated from the MNI152",
                  "2009a template's tissue maps (`maediff phantom`), not scans of people. This model is for",
                  "demonstration and testing of the software only. It is not a medical device and must not be",
                  "used for diagnosis or any clinical decision.", ""]
    else:
        lines += ["For research use only; not a medical device.", ""]
    noised = "the whole slice" if c.patch.whole_slice else f"{c.patch.patch} x {c.patch.patch} patches, stride {c.patch.stride}"
    if c.latent:
        a = c.latent.autoencoder
        noised = (f"random patches of the latent of a KL autoencoder (channels {list(a.channels)}, "
                  f"{a.latent_channels} x {c.patch.size // a.downsampling} x {c.patch.size // a.downsampling}); "
                  f"detection repairs the input's latent in DDIM steps")
    lines += [
        "## What it is",
        f"- method `{c.method}`, configuration `{c.name}`: U-Net channels {list(c.unet.channels)}, "
        f"{c.unet.res_blocks} residual blocks per level" + (", masked-autoencoder module" if c.mae else "")
        + (f", conditioned on a ResNet encoding ({c.encoder.block} blocks {list(c.encoder.layers)}) of the input"
           if c.encoder else ""),
        f"- noised region: {noised}"
        + f"; {c.diffusion.noise} noise, {c.diffusion.schedule} schedule, t_test {levels_text(c.diffusion.t_test)}"
        + f" of {c.diffusion.timesteps}" + (" (predictions averaged)" if len(c.diffusion.t_test) > 1 else ""),
        f"- anomaly score: {card.score}, median filtered in the eroded brain",
        f"- weights: {weights_mb:.1f} MB{' in all' if card.autoencoder else ''} (safetensors, "
        f"{t.get('weights_dtype', 'float32')})"
        + (f", the autoencoder's in `{card.autoencoder['weights']}`" if card.autoencoder else ""),
        f"- decision threshold: {card.threshold if card.threshold is not None else 'none (pass --threshold)'}"
        + (f", chosen on {t['threshold_from']['val']} (pooled validation Dice "
           f"{100 * t['threshold_from']['val_dice_pooled']:.1f} %, "
           f"{t['threshold_from'].get('protocol', 'ours')} evaluation protocol)" if t.get("threshold_from") else ""),
    ]
    levels = t.get("threshold_from", {}).get("t_test_val_dice_pooled")
    if levels:
        lines.append(f"- t_test {levels_text(c.diffusion.t_test)} chosen on the same validation volumes, by pooled Dice: "
                     + ", ".join(f"{level}: {100 * d:.1f} %" for level, d in levels.items())
                     + f" ({t['threshold_from'].get('t_test_protocol', 'ours')} evaluation protocol)")
    lines += [
        "",
        "## How it was trained",
        f"- data: {t.get('train_volumes', '?')} training and {t.get('val_volumes', '?')} validation volumes"
        + (f" from `{t['data']}`" if t.get("data") else ""),
        f"- {t.get('epoch', '?')} epochs, {t.get('step', '?')} steps, {recipe_text(t)}, seed {t.get('seed', '?')}, "
        f"{t.get('seconds', 0) / 60:.0f} minutes" + (" (the denoiser stage)" if t.get("autoencoder") else ""),
    ]
    s, first = t.get("started_from"), True
    while s:  # each model this one started from, back to the run that started at random
        lines.append(("- started from" if first else "- which started from") + f" the weights of `{s['model']}` "
                     f"(SHA-256 {s['sha256'][:12]})" + (", not at random" if first else "") + ": "
                     f"{s.get('epoch', '?')} epochs, {s.get('step', '?')} steps and {(s.get('seconds') or 0) / 60:.0f} "
                     "minutes before " + ("the ones above" if first else "those"))
        s, first = s.get("started_from"), False
    if t.get("autoencoder"):
        a = t["autoencoder"]
        lines.append(f"- before it, the autoencoder stage: {a.get('epoch', '?')} epochs, {a.get('step', '?')} steps, "
                     f"{a.get('seconds', 0) / 60:.0f} minutes, best validation L1 {a.get('best_val_loss') or 0:.4f}")
    if t.get("encoder"):
        e = t["encoder"]
        lines.append(f"- before it, the encoder's masked pre-training (SparK, its weights trained on with the whole "
                     f"network): {e.get('epoch', '?')} epochs, {e.get('step', '?')} steps, "
                     f"{e.get('seconds', 0) / 60:.0f} minutes, best validation loss {e.get('best_val_loss') or 0:.4f}")
    if t.get("command"):
        lines += ["- recipe:", "", "```", t["command"].rstrip(), "```"]
    lines += ["", "## Train on a real healthy cohort instead", "",
              "With IXI T2 volumes as the healthy cohort and BraTS21 for the threshold:", "",
              "```", IXI_RECIPE.rstrip(), "```", ""]
    return "\n".join(lines)


def recipe_text(training: dict) -> str:
    """A training record's recipe in words: batch, rate and its schedule, EMA, slices, augmentation."""
    text = f"batch {training.get('batch_size', '?')}, learning rate {training.get('lr', '?')}"
    if training.get("schedule", "constant") != "constant":
        text += f" ({training['schedule']} schedule, warm-up {100 * training.get('warmup', 0):.0f} % of the run)"
    if training.get("ema"):
        text += f", published as the EMA of its weights (decay {training['ema']})"
    text += f", {training.get('slices_per_volume', '?')} slices per volume per epoch"
    return text + (", intensity augmentation" if training.get("augment") else "")


def publish_model(source: str | Path, dest: str | Path, description: str, notes: dict | None = None,
                  half: bool = False) -> list[Path]:
    """A trained model as a release: weights only (``half``: as float16, half the size; loading
    casts them back), the card with ``notes`` added to its training record, and the card in
    Markdown; a MAD-AD model's autoencoder beside them (``x.autoencoder.safetensors``). Returns the
    paths."""

    def weights_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.half() if half and v.is_floating_point() else v for k, v in module.state_dict().items()}

    model, card = load_model(source)
    card.description = description
    card.training.update({**(notes or {}), "weights_dtype": "float16" if half else "float32"})
    parts = []
    if card.autoencoder is not None:
        part = model_paths(dest)[0].with_suffix(".autoencoder.safetensors")
        with atomic_path(part) as tmp:
            save_file({k: v.contiguous() for k, v in weights_of(model.autoencoder).items()}, str(tmp))
        card.autoencoder = {"weights": part.name, "sha256": sha256_of(part)}
        model, parts = model.denoiser, [part]
    weights = save_pair(weights_of(model), card.to_dict(), dest)
    markdown = weights.with_suffix(".md")
    size = sum(p.stat().st_size for p in [weights, *parts])
    write_text_atomic(card_markdown(card, size / 1e6), markdown)
    return [weights, *parts, model_paths(dest)[1], markdown]
