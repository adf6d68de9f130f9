"""Models in and out of their files in torch: weights checked against the network before they are
read, a method's extra weight files beside its own, and publishing (cards alone: cards.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CardError
from ..files import atomic_path, write_text_atomic
from ..methods import method_of
from .card import MAX_PARAMETERS, ModelCard
from .cards import card_from_record
from .markdown import card_markdown
from .pairs import model_paths, read_json, save_pair, sha256_of, verified


def load_weights(weights: Path, model: torch.nn.Module, device: torch.device | str, prefix: str = "") -> dict:
    """Tensors of ``weights`` into ``model``, their names and shapes checked against it from the file's
    header before any data is read; returns the file's other tensors (those not under ``prefix``)."""
    expected = {f"{prefix}{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as handle:
            found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise CardError(f"{weights}: cannot read weights ({err})") from None
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in set(found) - set(expected) if k.startswith(prefix))
    wrong = [f"{k} {found[k]} (expected {expected[k]})" for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        raise CardError(f"{weights}: weights do not fit the configuration (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]})")
    try:
        tensors = load_file(str(weights), device=str(device))
    except Exception as err:  # noqa: BLE001
        raise CardError(f"{weights}: cannot read weights ({err})") from None
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # a diverged run: every reconstruction would be NaN
        raise CardError(f"{weights}: {len(broken)} tensor(s) hold NaN or infinite values ({broken[0]}, ...)")
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k in expected})
    return {k: v for k, v in tensors.items() if k not in expected}


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """The network of a model card, its weights (and the method's extra weight files) loaded."""
    weights, meta = model_paths(path)
    record = read_json(meta)  # read once: the card, then the weights it names by hash
    card = card_from_record(meta, record)
    verified(weights, meta, record)
    parameters = card.config.parameter_count()
    if parameters > MAX_PARAMETERS:  # before any memory is taken
        raise CardError(f"{meta}: configuration {card.config.name!r} has {parameters / 1e6:.0f} M parameters "
                        f"({4 * parameters / 1e9:.1f} GB); the limit is {MAX_PARAMETERS / 1e6:.0f} M")
    model = card.config.build()
    for name, part in method_of(card.config.method).weight_parts(model).items():
        load_weights(card.extra_weight_path(name) if name else weights, part, device)
    return model.to(device).eval(), card


def save_model(model: torch.nn.Module, card: ModelCard, path: str | Path) -> Path:
    return save_pair(model.state_dict(), card.to_dict(), path)


SYNTHETIC_USE = ("Demonstration and testing of the software only. Trained on synthetic phantoms (generated from "
                 "the MNI152 2009a template's tissue maps), not scans of people; not a medical device, and not for "
                 "diagnosis or any clinical decision.")
RESEARCH_USE = "Research use only; not a medical device, and not for diagnosis or any clinical decision."


def publish_model(source: str | Path, dest: str | Path, description: str, notes: dict | None = None,
                  half: bool = False, intended_use: str | None = None) -> list[Path]:
    """A trained model as a release: weights only (``half``: as float16, half the size; loading
    casts them back), the card with ``notes`` added to its training record, and the card in
    Markdown; a method's extra weights beside them (``x.NAME.safetensors``); ``intended_use`` (default:
    by whether it learnt from phantoms). Returns the paths."""

    def weights_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.half() if half and v.is_floating_point() else v for k, v in module.state_dict().items()}

    model, card = load_model(source)
    card.description = description
    card.training.update({**(notes or {}), "weights_dtype": "float16" if half else "float32"})
    card.intended_use = intended_use or (SYNTHETIC_USE if card.training.get("synthetic_data") else RESEARCH_USE)
    card.onnx = {}  # exported from the source's weights, not these (onnx_export.py writes them again)
    parts = method_of(card.config.method).weight_parts(model)
    written = []
    for name, part in parts.items():
        if name:
            path = model_paths(dest)[0].with_suffix(f".{name}.safetensors")
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in weights_of(part).items()}, str(tmp))
            card.extra_weights[name] = {"weights": path.name, "sha256": sha256_of(path)}
            written.append(path)
    weights = save_pair(weights_of(parts[""]), card.to_dict(), dest)
    markdown = weights.with_suffix(".md")
    size = sum(p.stat().st_size for p in [weights, *written])
    write_text_atomic(card_markdown(card, size / 1e6), markdown)
    return [weights, *written, model_paths(dest)[1], markdown]
