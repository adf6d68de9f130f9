"""The model-space cache that training and evaluation read, in one of two forms:

- the folder ``maediff prepare`` writes: a subfolder per case (``image``, ``mask`` and, for lesion
  sets, ``seg`` as NIfTI, then ``record.json``) beside ``split.csv``;
- one ``.npz`` file packed from it (``maediff pack``) for a training machine without SimpleITK:
  intensities as uint8 (steps of 1/255 of their [0, 1] range), masks as bits, split and records as
  JSON. About 215 kB a volume (measured on the sample and on phantoms).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import atomic_path, write_text_atomic

PACK_VERSION = 1


def write_split_csv(rows: list[dict], path: str | Path) -> Path:
    check_split(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", "subject", "split", "fold"])
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(buffer.getvalue(), path)


def read_split_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as handle:
        rows = [{**row, "fold": int(row["fold"])} for row in csv.DictReader(handle)]
    check_split(rows)
    return rows


def check_split(rows: list[dict]) -> None:
    """A subject in two splits (or two folds) leaks training data into evaluation."""
    seen: dict[str, tuple] = {}
    for row in rows:
        key = (row["split"], row["fold"])
        if seen.setdefault(row["subject"], key) != key:
            raise InputError(f"subject {row['subject']} appears in {seen[row['subject']]} and {key}")


def select(rows: list[dict], split: str, fold: int | None = None) -> list[str]:
    """Case names of a split; with ``fold``, 'val' means that fold and 'train' the other folds."""
    if fold is None:
        return [r["case"] for r in rows if r["split"] == split]
    train = [r for r in rows if r["split"] == "train"]
    if split == "val":
        return [r["case"] for r in train if r["fold"] == fold]
    if split == "train":
        return [r["case"] for r in train if r["fold"] != fold]
    return [r["case"] for r in rows if r["split"] == split]


@dataclass
class PreparedCase:
    name: str
    image: np.ndarray  # (z, y, x) in 0..1
    mask: np.ndarray  # brain mask, bool
    seg: np.ndarray | None  # lesion truth (bool) or None for healthy
    record: dict


def is_pack(path: str | Path) -> bool:
    return Path(path).suffix == ".npz"


def load_prepared(source: str | Path, names: list[str] | None = None, limit: int | None = None) -> list[PreparedCase]:
    """Cases from the cache, a folder or a pack (all of its cases, or the named ones in that order;
    the first ``limit``)."""
    source = Path(source)
    if is_pack(source):
        return _load_pack(source, names, limit)
    if names is None:
        names = sorted(p.parent.name for p in source.glob("*/record.json"))
    names = names[:limit] if limit else names
    if not names:
        raise InputError(f"{source}: no prepared cases (run `maediff prepare` first)")
    import SimpleITK as sitk  # only the folder form needs it

    def array(path: Path) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    cases = []
    for name in names:
        folder = source / name
        if not (folder / "record.json").is_file():
            raise InputError(f"{folder}: case not prepared")
        seg_path = folder / "seg.nii.gz"
        cases.append(PreparedCase(
            name=name, image=array(folder / "image.nii.gz").astype(np.float32),
            mask=array(folder / "mask.nii.gz").astype(bool),
            seg=array(seg_path).astype(bool) if seg_path.is_file() else None,
            record=json.loads((folder / "record.json").read_text()),
        ))
    return cases


def split_of(source: str | Path) -> list[dict]:
    source = Path(source)
    if is_pack(source):
        with _open_pack(source) as pack:
            rows = json.loads(str(pack["split"]))
        check_split(rows)
        return rows
    path = source / "split.csv"
    if not path.is_file():
        raise InputError(f"{source}: no split.csv (run `maediff prepare` first)")
    return read_split_csv(path)


def pack_prepared(folder: str | Path, out: str | Path, splits: tuple[str, ...] | None = None) -> dict:
    """The cases of ``folder`` (those in ``splits``, or all) and its split in one ``.npz``, written
    atomically. Returns what went in and the file's size."""
    out = Path(out)
    if not is_pack(out):
        raise InputError(f"{out}: a pack is an .npz file")
    rows = [r for r in split_of(folder) if splits is None or r["split"] in splits]
    cases = load_prepared(folder, [r["case"] for r in rows])
    shape = cases[0].image.shape
    if any(c.image.shape != shape for c in cases):
        raise InputError(f"{folder}: cases of different model grids cannot share a pack")
    has_seg = np.array([c.seg is not None for c in cases])
    bits = lambda arrays: np.packbits(np.stack(arrays).reshape(len(arrays), -1), axis=1)  # noqa: E731
    with atomic_path(out, ".npz") as tmp:
        np.savez_compressed(
            tmp, version=PACK_VERSION, shape=np.array(shape), names=np.array([c.name for c in cases]),
            images=np.stack([np.round(np.clip(c.image, 0, 1) * 255).astype(np.uint8) for c in cases]),
            masks=bits([c.mask for c in cases]), has_seg=has_seg,
            segs=bits([c.seg if c.seg is not None else np.zeros(shape, bool) for c in cases]),
            split=json.dumps(rows), records=json.dumps([c.record for c in cases]))
    return {"cases": len(cases), "splits": sorted({r["split"] for r in rows}), "bytes": out.stat().st_size}


def _open_pack(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: no such pack (make one with `maediff pack`)")
    try:
        pack = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable pack ({err})") from None
    if "version" not in pack or int(pack["version"]) != PACK_VERSION:
        raise InputError(f"{path}: not a pack of version {PACK_VERSION}")
    return pack


def _load_pack(path: Path, names: list[str] | None, limit: int | None) -> list[PreparedCase]:
    with _open_pack(path) as pack:
        stored = [str(n) for n in pack["names"]]
        names = (names if names is not None else stored)
        names = names[:limit] if limit else names
        missing = sorted(set(names) - set(stored))
        if missing:
            raise InputError(f"{path}: the pack holds no case {missing[0]}")
        if not names:
            raise InputError(f"{path}: no cases selected")
        shape = tuple(int(v) for v in pack["shape"])
        rows = [stored.index(n) for n in names]
        images, masks, segs = pack["images"], pack["masks"], pack["segs"]
        has_seg, records = pack["has_seg"], json.loads(str(pack["records"]))
        count = int(np.prod(shape))

        def unbits(packed: np.ndarray) -> np.ndarray:
            return np.unpackbits(packed, count=count).astype(bool).reshape(shape)

        return [PreparedCase(name, images[i].astype(np.float32) / 255.0, unbits(masks[i]),
                             unbits(segs[i]) if has_seg[i] else None, records[i])
                for name, i in zip(names, rows, strict=True)]
