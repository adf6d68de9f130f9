"""Named method configurations and the model file format (safetensors weights + JSON card).

Loading never unpickles: weights come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .diffusion import DiffusionConfig, PatchConfig
from .networks import DiffusionNet, MAEConfig, UNetConfig
from .volume_io import VolumeError, atomic_path, write_text_atomic

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    name: str
    method: str  # maediff | pddpm | anoddpm
    unet: UNetConfig = UNetConfig()
    mae: MAEConfig | None = None
    patch: PatchConfig = PatchConfig()
    diffusion: DiffusionConfig = DiffusionConfig()

    def build(self) -> DiffusionNet:
        return DiffusionNet(self.unet, self.mae, self.patch.size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        def tupled(d: dict) -> dict:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

        return cls(
            name=data["name"], method=data["method"], unet=UNetConfig(**tupled(data["unet"])),
            mae=MAEConfig(**data["mae"]) if data.get("mae") else None,
            patch=PatchConfig(**data["patch"]), diffusion=DiffusionConfig(**data["diffusion"]),
        )


# A CPU-sized U-Net that keeps every part (REFERENCE.md, "Measured": 32/64/64, 2 res blocks).
_SMALL_UNET = UNetConfig(channels=(32, 64, 64), res_blocks=2, head_channels=32)
_SMALL_MAE = MAEConfig(encoder_depth=4, encoder_width=128, encoder_heads=4,
                       decoder_depth=4, decoder_width=128, decoder_heads=4)
_NO_ATTENTION = (False, False, False)  # pDDPM / AnoDDPM: attention only in the middle block

CONFIGS: dict[str, ModelConfig] = {
    "maediff": ModelConfig("maediff", "maediff", mae=MAEConfig()),
    "pddpm-s48": ModelConfig("pddpm-s48", "pddpm", UNetConfig(attention=_NO_ATTENTION), patch=PatchConfig(stride=48)),
    "pddpm-s16": ModelConfig("pddpm-s16", "pddpm", UNetConfig(attention=_NO_ATTENTION)),
    "anoddpm": ModelConfig("anoddpm", "anoddpm", UNetConfig(attention=_NO_ATTENTION), patch=PatchConfig(whole_slice=True)),
}
for _name, _config in list(CONFIGS.items()):
    # Attention over the 48 x 48 map (2304 tokens) is half of a small net's FLOPs (15.2 -> 8.1
    # GFLOP for maediff-small): the small nets keep it at 24 x 24 only.
    _unet = replace(_SMALL_UNET, attention=(False, False, _config.unet.attention[-1]))
    CONFIGS[f"{_name}-small"] = replace(_config, name=f"{_name}-small", unet=_unet,
                                        mae=_SMALL_MAE if _config.mae else None)


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

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "config": self.config.to_dict(), "threshold": self.threshold,
                "preprocessing": self.preprocessing, "training": self.training, "description": self.description}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        return cls(ModelConfig.from_dict(data["config"]), data.get("threshold"), data.get("preprocessing", {}),
                   data.get("training", {}), data.get("description", ""))


def with_operating_point(card: ModelCard, threshold: float, t_test: int, stride: int, chosen_on: dict) -> ModelCard:
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


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_model(model: torch.nn.Module, card: ModelCard, path: str | Path) -> Path:

    weights, meta = model_paths(path)
    save_tensors(model.state_dict(), weights)
    write_text_atomic(json.dumps(card.to_dict(), indent=1) + "\n", meta)
    return weights


def load_card(path: str | Path) -> ModelCard:
    weights, meta = model_paths(path)
    if not meta.is_file():
        raise VolumeError(f"{meta}: model card not found (a model is a .safetensors + .json pair)")
    try:
        data = json.loads(meta.read_text())
        return ModelCard.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise VolumeError(f"{meta}: not a valid model card ({err})") from err


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[DiffusionNet, ModelCard]:
    weights, _ = model_paths(path)
    card = load_card(path)
    if not weights.is_file():
        raise VolumeError(f"{weights}: model weights not found")
    model = card.config.build()
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise VolumeError(f"{weights}: cannot read weights ({err})") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VolumeError(f"{weights}: weights do not fit configuration {card.config.name!r} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
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
    lines += [
        "## What it is",
        f"- method `{c.method}`, configuration `{c.name}`: U-Net channels {list(c.unet.channels)}, "
        f"{c.unet.res_blocks} residual blocks per level" + (", masked-autoencoder module" if c.mae else ""),
        "- noised region: " + ("the whole slice" if c.patch.whole_slice else
                               f"{c.patch.patch} x {c.patch.patch} patches, stride {c.patch.stride}")
        + f"; {c.diffusion.noise} noise, t_test {c.diffusion.t_test} of {c.diffusion.timesteps}",
        f"- weights: {weights_mb:.1f} MB (safetensors)",
        f"- decision threshold: {card.threshold if card.threshold is not None else 'none (pass --threshold)'}"
        + (f", chosen on {t['threshold_from']['val']} (pooled validation Dice "
           f"{100 * t['threshold_from']['val_dice_pooled']:.1f} %, "
           f"{t['threshold_from'].get('protocol', 'ours')} evaluation protocol)" if t.get("threshold_from") else ""),
    ]
    levels = t.get("threshold_from", {}).get("t_test_val_dice_pooled")
    if levels:
        lines.append(f"- t_test {c.diffusion.t_test} chosen on the same validation volumes, by pooled Dice: "
                     + ", ".join(f"{level}: {100 * d:.1f} %" for level, d in levels.items())
                     + f" ({t['threshold_from'].get('t_test_protocol', 'ours')} evaluation protocol)")
    lines += [
        "",
        "## How it was trained",
        f"- data: {t.get('train_volumes', '?')} training and {t.get('val_volumes', '?')} validation volumes"
        + (f" from `{t['data']}`" if t.get("data") else ""),
        f"- {t.get('epoch', '?')} epochs, {t.get('step', '?')} steps, batch {t.get('batch_size', '?')}, "
        f"learning rate {t.get('lr', '?')}, seed {t.get('seed', '?')}, {t.get('seconds', 0) / 60:.0f} minutes",
    ]
    if t.get("command"):
        lines += ["- recipe:", "", "```", t["command"].rstrip(), "```"]
    lines += ["", "## Train on a real healthy cohort instead", "",
              "With IXI T2 volumes as the healthy cohort and BraTS21 for the threshold:", "",
              "```", IXI_RECIPE.rstrip(), "```", ""]
    return "\n".join(lines)


def publish_model(source: str | Path, dest: str | Path, description: str, notes: dict | None = None) -> list[Path]:
    """A trained model as a release: weights only, the card with ``notes`` added to its training
    record, and the card in Markdown. Returns the three paths."""

    model, card = load_model(source)
    card.description = description
    card.training.update(notes or {})
    weights = save_model(model, card, dest)
    markdown = weights.with_suffix(".md")
    write_text_atomic(card_markdown(card, weights.stat().st_size / 1e6), markdown)
    return [weights, model_paths(dest)[1], markdown]
