"""A model or checkpoint on disk: ``x.safetensors`` and ``x.json`` written as one commit. The JSON
names the weights' SHA-256, so a kill leaves the old pair or the new one and a damaged file is
named on loading. Loading never unpickles: weights come from safetensors, the rest from JSON."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CardError
from ..files import atomic_path, write_text_atomic

if TYPE_CHECKING:
    import torch


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
    from safetensors.torch import save_file  # torch's: the caller holds torch tensors; reading needs no torch

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


def read_json(meta: Path) -> dict:
    if not meta.is_file():
        raise CardError(f"{meta}: model card not found (a model is a .safetensors + .json pair)")
    try:
        record = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CardError(f"{meta}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise CardError(f"{meta}: not a model card (a JSON object)")
    return record


def verified(weights: Path, meta: Path, record: dict) -> Path:
    """``weights``, once known to be the file ``record`` was written with (its SHA-256; older cards
    without one are taken as they are)."""
    if not weights.is_file():
        raise CardError(f"{weights}: model weights not found")
    expected = record.get("weights_sha256")
    if expected is not None and sha256_of(weights) != expected:
        hint = (" (a save was interrupted: `maediff train` on its folder completes it)" if _pending(meta).is_file()
                else " (damaged or replaced; copy the pair again)")
        raise CardError(f"{weights}: does not match {meta.name}{hint}")
    return weights


def read_pair(path: str | Path) -> tuple[Path, dict]:
    """The verified weights' path and the JSON beside them."""
    weights, meta = model_paths(path)
    record = read_json(meta)
    return verified(weights, meta, record), record
