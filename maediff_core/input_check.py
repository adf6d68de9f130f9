"""Is the input a scan the model knows? Its tissue contrast and its slice thickness, against the model's
training volumes (``ModelCard.inputs``).

After registration the model grid and the atlas agree, so the atlas tissue maps tell where CSF, grey
and white matter are without a segmentation. Intensities are medians on the model's 0..1 scale; the
checks use their differences (a ratio divides by the percentile offset and is unstable near the dark end).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from .atlas import Atlas
from .errors import InputError
from .preprocess import MIN_REGISTRATION_MI
from .volume_io import reference_image

# Voxels counted as one tissue: the ventricles for CSF (the cortical CSF is a partial-volume rim at
# 2 mm), and the cores of the grey and white matter maps.
GM_CORE, WM_CORE = 0.7, 0.9
MIN_VOXELS = 50  # fewer voxels of a tissue inside the brain mask: the brain is not (all) there
CONTRASTS = ("csf_wm", "gm_wm", "csf_gm")
# Measured on phantoms of each weighting (docs/input-checks.md): T2 phantoms, with the benchmark's
# contrast shifts, have CSF 0.25 or more above white matter and 0.13 or more above grey matter;
# proton-density ones fall below one of these two limits.
PD_CSF_WM, PD_CSF_GM = 0.2, 0.07
# A contrast farther outside the training data's range than the range is wide, and at least 0.1, is a
# warning (the benchmark's gamma and bias-field shifts of T2 stay inside: docs/input-checks.md).
BORDERLINE, MIN_MARGIN = 1.0, 0.1
# Slices thicker than the training data's thickest by more than this are a warning: on phantoms, Dice
# and false candidates hold to 3 mm and degrade from 4.5 mm, for a model trained on 1 to 3 mm
# (docs/input-checks.md).
THICK_SLICE_MARGIN_MM = 1.0


@dataclass(frozen=True)
class TissueContrast:
    csf: float  # median intensities on the model's 0..1 scale
    gm: float
    wm: float

    @property
    def differences(self) -> dict[str, float]:
        return {"csf_wm": self.csf - self.wm, "gm_wm": self.gm - self.wm, "csf_gm": self.csf - self.gm}

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in {**asdict(self), **self.differences}.items()}


@lru_cache(maxsize=4)
def tissue_regions(atlas_folder: str) -> dict[str, np.ndarray]:
    """Boolean CSF / GM / WM regions of the atlas on the model grid, (z, y, x)."""
    atlas = Atlas.load(atlas_folder)
    grid = reference_image(atlas.model_grid)

    def on_grid(image: sitk.Image) -> np.ndarray:
        image = sitk.Cast(image, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0))

    return {"csf": on_grid(atlas.ventricles) >= 0.5, "gm": on_grid(atlas.probability("gm")) > GM_CORE,
            "wm": on_grid(atlas.probability("wm")) > WM_CORE}


def measure(image: np.ndarray, mask: np.ndarray, atlas: Atlas) -> TissueContrast:
    """Median intensity of each tissue of a model-space ``image`` inside its brain ``mask``."""
    values = {}
    for tissue, region in tissue_regions(str(atlas.folder)).items():
        inside = image[region & mask]
        if inside.size < MIN_VOXELS:
            raise InputError(f"only {inside.size} model voxels of {tissue.upper()} lie inside the brain mask: "
                             "the registration failed or the volume holds too little of the brain")
        values[tissue] = float(np.median(inside))
    return TissueContrast(**values)


def likely_weighting(contrast: TissueContrast, thick_slices: bool = False) -> str | None:
    """The weighting a contrast clearly is when it is not T2, with the reason; None when T2-like. Thick
    slices blur the ventricles into white matter: then only the signs are read (a T2 of 6 mm slices
    measured CSF - WM 0.19, docs/input-checks.md)."""
    d = contrast.differences
    if d["csf_wm"] < 0 and d["gm_wm"] < 0:
        return "a T1-weighted image: CSF and grey matter are darker than white matter"
    if d["csf_wm"] < 0:
        return "a FLAIR image: CSF is darker than white matter, grey matter brighter"
    if not thick_slices and (d["csf_wm"] < PD_CSF_WM or d["csf_gm"] < PD_CSF_GM):
        return (f"a proton-density-weighted image: CSF is only {d['csf_wm']:.2f} brighter than white matter and "
                f"{d['csf_gm']:.2f} than grey matter (T2: {PD_CSF_WM} and {PD_CSF_GM} or more)")
    return None


def outside_range(contrast: TissueContrast, known: dict[str, list[float]]) -> list[str]:
    """Contrasts well outside the training data's range, each in words."""
    found = []
    for name, (low, high) in known.items():
        value, margin = contrast.differences[name], max(BORDERLINE * (high - low), MIN_MARGIN)
        if not low - margin <= value <= high + margin:
            a, b = name.upper().split("_")
            found.append(f"{a} - {b} contrast {value:.2f}, the training data's {low:.2f} to {high:.2f}")
    return found


def contrast_warnings(contrast: TissueContrast, known: dict[str, list[float]] | None, force: bool = False,
                      thick_slices: bool = False) -> list[str]:
    """Warnings for a borderline contrast; :class:`InputError` for one the model was never trained on
    (unless ``force``: then that, too, is a warning)."""
    weighting = likely_weighting(contrast, thick_slices)
    if weighting is not None:
        message = f"this looks like {weighting}; the model was trained on T2"
        if not force:
            raise InputError(message + " (--force runs it anyway)")
        return [message + "; run anyway (--force)"]
    far = outside_range(contrast, known or {})
    return [f"tissue contrast unlike the model's training data: {'; '.join(far)}"] if far else []


def slice_warnings(spacing: list[float], known: list[float] | None) -> list[str]:
    """A warning when the input's thickest voxel dimension is well beyond the training data's."""
    thickest = max(spacing)
    if known is None or thickest <= known[1] + THICK_SLICE_MARGIN_MM:
        return []
    return [f"slices of {thickest:.1f} mm, thicker than the model's training data ({known[0]:.1f} to {known[1]:.1f}"
            f" mm): expect more false candidates and lower Dice (docs/input-checks.md)"]


def tissue_contrast(prepared, atlas: Atlas) -> TissueContrast | None:
    """The tissue contrast of a preprocessed volume (its ``image`` and ``mask``), None where the atlas
    has no tissue maps (a user atlas of ``maediff atlas``)."""
    if not all(key in atlas.info["files"] for key in ("ventricles", "gm", "wm")):
        return None
    return measure(prepared.image, prepared.mask, atlas)


def check_input(prepared, inputs: dict, atlas: Atlas, force: bool = False) -> tuple[TissueContrast | None, list[str]]:
    """The contrast and slice checks of one preprocessed input (its ``image``, ``mask`` and ``record``)
    against a card's ``inputs``: the measured contrast (None where the atlas has no tissue maps) and
    the warnings. A contrast the model was never trained on raises :class:`InputError` unless
    ``force``; after a registration that matched the atlas poorly the tissues are where the atlas is
    not, and the contrast is reported but not judged."""
    slices = slice_warnings(prepared.record["native_grid"]["spacing"], inputs.get("slice_mm"))
    contrast = tissue_contrast(prepared, atlas)
    if contrast is None:
        return None, [f"the tissue contrast was not checked: the atlas {atlas.info.get('name', atlas.folder)} has no"
                      " tissue maps", *slices]
    information = prepared.record.get("registration_mi")
    if information is not None and information < MIN_REGISTRATION_MI:
        warnings = ["the tissue contrast was not checked: the registration matched the atlas poorly"]
    else:
        warnings = contrast_warnings(contrast, inputs.get("contrast"), force, thick_slices=bool(slices))
    return contrast, [*warnings, *slices]
