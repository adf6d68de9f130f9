"""The bundled atlas (MNI ICBM152 2009a in the reference's 192 x 192 x 160 box) and the model grid.

The model grid is the atlas box downsampled by 2 with the reference's top and bottom slices dropped:
96 x 96 x 50 voxels of 2 mm. Every model-space array in the project lives on this grid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import CardError, InputError
from .files import write_text_atomic
from .resources import resources_dir
from .volume_io import geometry_of, read_volume, resample_isotropic, write_volume

ATLAS_ENV = "MAEDIFF_ATLAS"
BOX_SIZE = (192, 192, 160)  # the atlas box in voxels of 1 mm (docs/reference.md, "Data geometry")
MODEL_DOWNSAMPLE = 2  # docs/reference.md: downsampled by 2 to 96 x 96 in-plane
MODEL_SLICES = (15, 65)  # of the 80 downsampled slices: 15 dropped at each end (paper Sec. 4.2)


def default_atlas_dir() -> Path:
    return Path(os.environ.get(ATLAS_ENV, resources_dir() / "atlas"))


def card_atlas(name: str, model_folder: Path | None) -> Path:
    """The atlas folder a model card names, relative to the model's folder. A card is data from
    anywhere: it may not point preprocessing at files outside that folder and the bundled resources."""
    path = Path(name)
    if not path.is_absolute() and model_folder is not None:
        path = model_folder / path
    path = path.resolve()
    allowed = [resources_dir().resolve(), *([model_folder.resolve()] if model_folder is not None else [])]
    if not any(path.is_relative_to(root) for root in allowed):
        raise CardError(f"the model card names the atlas {name}, outside the model's folder and the bundled"
                        f" atlases: pass --atlas {name} to use it anyway")
    return path


@dataclass
class Atlas:
    """Atlas images, read on first use. ``folder`` holds ``atlas.json`` and the NIfTI files."""

    folder: Path

    @classmethod
    def load(cls, folder: str | Path | None = None) -> Atlas:
        folder = Path(folder) if folder else default_atlas_dir()
        if not (folder / "atlas.json").is_file():
            raise InputError(f"{folder}: not an atlas folder (no atlas.json)")
        return cls(folder)

    @cached_property
    def info(self) -> dict:
        return json.loads((self.folder / "atlas.json").read_text())

    def _read(self, key: str, probability: bool = False) -> sitk.Image:
        name = self.info["files"].get(key)
        if name is None:
            raise InputError(f"{self.folder}: atlas has no '{key}' image")
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder.resolve()):
            raise InputError(f"{self.folder}: atlas.json names {name}, outside the atlas folder")
        image = read_volume(path)
        if probability:
            scale = float(self.info.get("probability_scale", 1))
            return sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) / scale, sitk.sitkFloat32)
        return image

    @cached_property
    def template(self) -> sitk.Image:
        return sitk.Cast(self._read("t1"), sitk.sitkFloat32)

    @cached_property
    def brain_mask(self) -> sitk.Image:
        return sitk.Cast(self._read("brainmask") > 0, sitk.sitkUInt8)

    def brain_mask_grown(self, radius: int) -> sitk.Image:
        """The brain mask dilated (``radius`` > 0) or eroded (< 0) by a ball of that many voxels: the
        registration's and the mask's margins, computed once per process rather than once per input."""
        return _grown_brain_mask(str(self.folder), radius)

    def probability(self, tissue: str) -> sitk.Image:
        """Tissue probability map (``gm``, ``wm``, ``csf``) scaled 0..1."""
        return self._read(tissue, probability=True)

    @cached_property
    def ventricles(self) -> sitk.Image:
        return sitk.Cast(self._read("ventricles") > 0, sitk.sitkUInt8)

    @cached_property
    def model_grid(self) -> dict:
        return model_grid_of(self.template)


@lru_cache(maxsize=16)
def _grown_brain_mask(folder: str, radius: int) -> sitk.Image:
    grow = sitk.BinaryDilate if radius > 0 else sitk.BinaryErode
    return grow(Atlas.load(folder).brain_mask, [abs(radius)] * 3)


def model_grid_of(atlas_image: sitk.Image) -> dict:
    """Geometry of the model grid derived from an atlas-box image (any user atlas works)."""
    f = MODEL_DOWNSAMPLE
    spacing = np.array(atlas_image.GetSpacing()) * f
    size = np.array(atlas_image.GetSize()) // f
    z0, z1 = MODEL_SLICES
    if size[2] < z1:
        raise InputError(
            f"atlas of {atlas_image.GetSize()} voxels is too short for slices {MODEL_SLICES}"
            f" after downsampling by {f}"
        )
    # Centre of the first 2x2x2 block of atlas voxels, moved up by the dropped slices.
    first = [(f - 1) / 2.0, (f - 1) / 2.0, (f - 1) / 2.0 + z0 * f]
    origin = atlas_image.TransformContinuousIndexToPhysicalPoint(first)
    grid = geometry_of(atlas_image)
    grid.update(size=[int(size[0]), int(size[1]), z1 - z0], spacing=spacing.tolist(), origin=list(origin))
    return grid


def to_box(image: sitk.Image, centre_index) -> sitk.Image:
    """Crop/pad ``image`` to BOX_SIZE voxels centred on ``centre_index`` (x, y, z), padding with 0."""
    start = np.round(np.asarray(centre_index) - np.array(BOX_SIZE) / 2).astype(int)
    size = np.array(image.GetSize())
    pad_lo = np.maximum(-start, 0)
    pad_hi = np.maximum(start + np.array(BOX_SIZE) - size, 0)
    image = sitk.ConstantPad(image, pad_lo.tolist(), pad_hi.tolist(), 0)
    return sitk.RegionOfInterest(image, list(BOX_SIZE), (start + pad_lo).tolist())


def brain_box_centre(mask: sitk.Image) -> np.ndarray:
    """(x, y, z) index of the centre of the mask's bounding box."""
    zyx = np.argwhere(sitk.GetArrayViewFromImage(mask))
    if zyx.size == 0:
        raise InputError("the brain mask is empty")
    return (zyx.min(0) + zyx.max(0))[::-1] / 2.0


def write_atlas(out: str | Path, prefix: str, images: dict[str, sitk.Image], info: dict) -> Path:
    """An atlas folder: ``<prefix>_<key>.nii.gz`` per image and ``atlas.json`` (written last)."""
    out = Path(out)
    for key, image in images.items():
        write_volume(image, out / f"{prefix}_{key}.nii.gz")
    files = {key: f"{prefix}_{key}.nii.gz" for key in images}
    write_text_atomic(json.dumps({**info, "files": files}, indent=2) + "\n", out / "atlas.json")
    return out


def make_user_atlas(template: str | Path, brain_mask: str | Path, out: str | Path, name: str | None = None) -> Atlas:
    """An atlas folder from any brain template (e.g. SRI24's T1) and its brain mask: 1 mm voxels,
    the 192 x 192 x 160 box around the brain. Enough for preprocessing (not for phantoms, which
    also need tissue maps)."""
    t1 = resample_isotropic(sitk.Cast(read_volume(template), sitk.sitkFloat32), 1.0)
    mask = sitk.Resample(sitk.Cast(read_volume(brain_mask) > 0, sitk.sitkUInt8), t1, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0)
    centre = brain_box_centre(mask)
    t1, mask = to_box(t1, centre), to_box(mask, centre)
    t1 = sitk.Clamp(t1, lowerBound=0.0)  # the registration initialiser needs non-negative values
    info = {"name": name or Path(template).name, "source": str(template), "brain_voxels": int(
        sitk.GetArrayViewFromImage(mask).sum())}
    return Atlas.load(write_atlas(out, "atlas", {"t1": t1, "brainmask": mask}, info))
