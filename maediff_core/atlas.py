"""The bundled atlas (MNI ICBM152 2009a in the reference's 192 x 192 x 160 box) and the model grid.

The model grid is the atlas box downsampled by 2 with the reference's top and bottom slices dropped:
96 x 96 x 50 voxels of 2 mm. Every model-space array in the project lives on this grid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .volume_io import VolumeError, geometry_of

ATLAS_ENV = "MAEDIFF_ATLAS"
MODEL_DOWNSAMPLE = 2  # REFERENCE.md: downsampled by 2 to 96 x 96 in-plane
MODEL_SLICES = (15, 65)  # of the 80 downsampled slices: 15 dropped at each end (paper Sec. 4.2)


def resources_dir() -> Path:
    """``Resources/`` of the repository or of the installed Slicer extension."""
    return Path(__file__).resolve().parent.parent / "Resources"


def default_atlas_dir() -> Path:
    return Path(os.environ.get(ATLAS_ENV, resources_dir() / "atlas"))


@dataclass
class Atlas:
    """Atlas images, read on first use. ``folder`` holds ``atlas.json`` and the NIfTI files."""

    folder: Path

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "Atlas":
        folder = Path(folder) if folder else default_atlas_dir()
        if not (folder / "atlas.json").is_file():
            raise VolumeError(f"{folder}: not an atlas folder (no atlas.json)")
        return cls(folder)

    @cached_property
    def info(self) -> dict:
        return json.loads((self.folder / "atlas.json").read_text())

    def _read(self, key: str, probability: bool = False) -> sitk.Image:
        name = self.info["files"].get(key)
        if name is None:
            raise VolumeError(f"{self.folder}: atlas has no '{key}' image")
        image = sitk.ReadImage(str(self.folder / name))
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

    def probability(self, tissue: str) -> sitk.Image:
        """Tissue probability map (``gm``, ``wm``, ``csf``) scaled 0..1."""
        return self._read(tissue, probability=True)

    @cached_property
    def ventricles(self) -> sitk.Image:
        return sitk.Cast(self._read("ventricles") > 0, sitk.sitkUInt8)

    @cached_property
    def model_grid(self) -> dict:
        return model_grid_of(self.template)


def model_grid_of(atlas_image: sitk.Image) -> dict:
    """Geometry of the model grid derived from an atlas-box image (any user atlas works)."""
    f = MODEL_DOWNSAMPLE
    spacing = np.array(atlas_image.GetSpacing()) * f
    size = np.array(atlas_image.GetSize()) // f
    z0, z1 = MODEL_SLICES
    if size[2] < z1:
        raise VolumeError(
            f"atlas of {atlas_image.GetSize()} voxels is too short for slices {MODEL_SLICES}"
            f" after downsampling by {f}"
        )
    # Centre of the first 2x2x2 block of atlas voxels, moved up by the dropped slices.
    first = [(f - 1) / 2.0, (f - 1) / 2.0, (f - 1) / 2.0 + z0 * f]
    origin = atlas_image.TransformContinuousIndexToPhysicalPoint(first)
    grid = geometry_of(atlas_image)
    grid.update(size=[int(size[0]), int(size[1]), z1 - z0], spacing=spacing.tolist(), origin=list(origin))
    return grid
