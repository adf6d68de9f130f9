"""Synthetic T2-weighted brains with known lesions, built from the atlas tissue maps.

No real data set can be reached offline, so the project tests and benchmarks itself on phantoms:
per-subject anatomy (smooth deformation, ventricle size, head size and pose), T2 contrast (CSF
bright, grey matter intermediate, white matter dark) with jitter, tissue texture, an optional
skull-like rim, slice-profile blur, a bias field and Rician noise, written in varied native
geometries. Lesions are tumours (core plus oedema, optional mass effect) or multiple-sclerosis-like
periventricular white-matter ovoids, with voxel ground truth.

A subject is built in "subject space" (the atlas frame at 1 mm, padded for the skull) and resampled
once into its native grid, so every image is a single interpolation away from the tissue maps.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .atlas import Atlas
from .files import write_text_atomic
from .volume_io import reference_image, write_volume

KINDS = ("healthy", "tumour", "ms")
PAD_MM = 16  # room around the atlas box for the skull-like rim
CLOSENESS = 40.0  # mm; beyond this distance from the brain nothing is drawn
FIELD_SPACING_MM = 4.0  # deformation fields are smooth: a 4 mm grid carries them
# Geometry of the scans: in-plane spacing and slice thickness choices (mm), IXI/BraTS-like.
IN_PLANE_MM = (0.8, 0.9375, 1.0, 1.2)
SLICE_MM = (1.0, 1.2, 1.5, 2.0, 3.0)
# Tissue intensity ranges per weighting, relative to the brightest tissue. Lesions lie between white
# matter and ``lesion`` (default: CSF): bright on T2, PD and FLAIR, dark on T1.
TISSUES = {
    "T2": {"csf": (0.9, 1.0), "gm": (0.5, 0.6), "wm": (0.33, 0.42)},
    "T1": {"csf": (0.1, 0.2), "gm": (0.45, 0.55), "wm": (0.7, 0.8)},
    "FLAIR": {"csf": (0.05, 0.12), "gm": (0.55, 0.65), "wm": (0.4, 0.5), "lesion": (0.9, 1.0)},
    "PD": {"csf": (0.75, 0.85), "gm": (0.7, 0.8), "wm": (0.55, 0.65)},
}


@dataclass
class PhantomConfig:
    deform: bool = True  # smooth random deformation and ventricle size
    deformation_mm: float = 2.5  # std of the random displacement
    ventricle_scale: tuple[float, float] = (-0.2, 0.45)  # radial expansion range
    head_scale: tuple[float, float] = (0.92, 1.08)
    rotation_deg: float = 10.0
    shift_mm: float = 10.0
    skull_probability: float = 0.5  # otherwise written skull-stripped (BraTS-like)
    noise: tuple[float, float] = (0.01, 0.035)  # Rician sigma relative to the brightest tissue (CSF on T2)
    bias: tuple[float, float] = (0.05, 0.3)  # amplitude of the log bias field
    tumour_diameter_mm: tuple[float, float] = (5.0, 60.0)
    ms_count: tuple[int, int] = (3, 10)
    ms_diameter_mm: tuple[float, float] = (3.0, 15.0)
    weighting: str = "T2"  # a key of TISSUES: the other weightings test the contrast check (input_check.py)
    slice_mm: float | None = None  # the same subject and pose acquired with this slice thickness


@dataclass
class Phantom:
    image: sitk.Image
    seg: sitk.Image | None
    info: dict = field(default_factory=dict)
    brain: sitk.Image | None = None  # the true brain on the image's grid (voxels at least half brain)


class _SubjectSpace:
    """The padded atlas grid with the atlas maps needed to build subjects, read once per process."""

    def __init__(self, atlas: Atlas):
        template = atlas.template
        spacing = np.array(template.GetSpacing())
        pad = int(round(PAD_MM / spacing[0]))
        size = np.array(template.GetSize()) + 2 * pad
        origin = template.TransformContinuousIndexToPhysicalPoint([-pad] * 3)
        self.grid = {"size": size.tolist(), "spacing": spacing.tolist(), "origin": list(origin),
                     "direction": list(template.GetDirection())}
        ref = reference_image(self.grid)
        brain = sitk.Resample(atlas.brain_mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        # Signed distance to the brain surface (mm, positive outside): brain fraction and skull
        # layers both follow from it after deformation. Stored as CLOSENESS - distance so that the
        # resampler's default 0 beyond the grid reads as far from the brain, not on its surface.
        distance = sitk.SignedMaurerDistanceMap(brain, insideIsPositive=False, useImageSpacing=True,
                                                squaredDistance=False)
        distance = sitk.Clamp(CLOSENESS - distance, lowerBound=0.0)
        maps = [sitk.Resample(atlas.probability(t), ref, sitk.Transform(), sitk.sitkLinear, 0.0)
                for t in ("gm", "wm")]
        self.maps = sitk.Compose([sitk.Cast(m, sitk.sitkFloat32) for m in maps]
                                 + [sitk.Cast(distance, sitk.sitkFloat32)])
        self.centre = np.array(ref.TransformContinuousIndexToPhysicalPoint((size / 2.0).tolist()))
        vent = sitk.GetArrayFromImage(atlas.ventricles)
        zyx = np.argwhere(vent).mean(0)
        self.ventricle_centre = np.array(atlas.ventricles.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))
        # Candidate lesion centres, in atlas physical coordinates.
        wm = sitk.GetArrayFromImage(atlas.probability("wm"))
        gm = sitk.GetArrayFromImage(atlas.probability("gm"))
        depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            atlas.brain_mask, insideIsPositive=True, useImageSpacing=True, squaredDistance=False))
        vent_dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            atlas.ventricles, insideIsPositive=False, useImageSpacing=True, squaredDistance=False))
        self.atlas = atlas.template
        self.tumour_sites = np.argwhere((wm + gm > 0.8) & (depth > 8))
        self.tumour_depth = depth[tuple(self.tumour_sites.T)]
        self.ms_sites = np.argwhere((wm > 0.75) & (vent_dist > 2) & (vent_dist < 12))

    def atlas_point(self, zyx: np.ndarray) -> np.ndarray:
        return np.array(self.atlas.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]))


@lru_cache(maxsize=2)
def _subject_space(atlas_folder: str) -> _SubjectSpace:
    return _SubjectSpace(Atlas.load(atlas_folder))


def make_phantom(kind: str, seed: int, config: PhantomConfig | None = None, atlas: Atlas | None = None,
                 native_grid: sitk.Image | None = None, pose: sitk.Transform | None = None) -> Phantom:
    """One subject of ``kind`` ('healthy', 'tumour', 'ms'), fully determined by ``seed``.

    ``native_grid`` and ``pose`` (scanner point -> subject point) replace the random scan geometry
    and head pose; with ``config.deform`` off the subject space is the atlas space, so ``pose``
    is then the exact ground truth of a registration.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    config = config or PhantomConfig()
    space = _subject_space(str((atlas or Atlas.load()).folder))
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    info: dict = {"kind": kind, "seed": seed}

    transform, lesions = _subject_anatomy(rng, kind, config, space, info)
    subject_ref = reference_image(space.grid)
    maps = sitk.GetArrayFromImage(sitk.Resample(space.maps, subject_ref, transform, sitk.sitkLinear, 0.0))
    gm, wm, distance = maps[..., 0], maps[..., 1], CLOSENESS - maps[..., 2]
    brain = np.clip(0.5 - distance, 0.0, 1.0)
    gm, wm = np.minimum(gm, brain), np.minimum(wm, brain)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)

    if config.weighting not in TISSUES:
        raise ValueError(f"weighting must be one of {tuple(TISSUES)}, got {config.weighting!r}")
    contrast = {tissue: rng.uniform(*span) for tissue, span in TISSUES[config.weighting].items()}
    info["contrast"] = {k: round(float(v), 3) for k, v in contrast.items()}
    texture = _smooth_noise(rng, brain.shape, sigma_vox=1.5)
    image = (csf * contrast["csf"] + gm * contrast["gm"] + wm * contrast["wm"]) * (1.0 + 0.04 * texture)
    skull = rng.random() < config.skull_probability
    if skull:
        image += _skull_layers(rng, distance, texture)
    info["skull"] = bool(skull)

    label = np.zeros(brain.shape, np.uint8)
    for lesion in lesions:
        _paint_lesion(rng, lesion, image, label, brain, gm + wm, contrast, subject_ref)
    info["lesions"] = [_lesion_summary(lesion) for lesion in lesions]

    native_ref, scan = _native_geometry(rng, config, space)
    native_ref = native_grid if native_grid is not None else native_ref
    pose = pose if pose is not None else scan["transform"]
    info["geometry"] = {"size": list(native_ref.GetSize()), "spacing": [round(s, 4) for s in native_ref.GetSpacing()],
                        "orientation": scan["orientation"] if native_grid is None else "given",
                        "head_scale": scan["head_scale"] if pose is scan["transform"] else None}
    channels = [image.astype(np.float32), brain.astype(np.float32)]
    channels += [(label == v).astype(np.float32) for v in (1, 2)] if lesions else []
    stack = sitk.GetImageFromArray(np.stack(channels, -1), isVector=True)
    stack.CopyInformation(subject_ref)
    stack = _slice_profile_blur(stack, native_ref, pose)
    native = sitk.GetArrayFromImage(sitk.Resample(stack, native_ref, pose, sitk.sitkLinear, 0.0))
    out = _acquired(rng, config, native, max(contrast.values()), skull, native_ref)
    seg = _segmentation(native, native_ref, info) if lesions else None
    brain_image = sitk.GetImageFromArray((native[..., 1] >= 0.5).astype(np.uint8))
    brain_image.CopyInformation(native_ref)
    return Phantom(out, seg, info, brain_image)


def _subject_anatomy(rng: np.random.Generator, kind: str, config: PhantomConfig, space: _SubjectSpace,
                     info: dict) -> tuple[sitk.Transform, list[dict]]:
    """The subject's deformation of the atlas (its own anatomy, then the lesions' mass effect) and
    its lesions, placed where their atlas sites lie in that anatomy."""
    field_ref = _field_grid(space)
    displacement = np.zeros(tuple(field_ref.GetSize()[::-1]) + (3,))
    points = _field_points(field_ref)
    if config.deform:
        displacement += _smooth_random_field(rng, field_ref.GetSize(), config.deformation_mm)
        scale = rng.uniform(*config.ventricle_scale)
        displacement += _radial_field(points, space.ventricle_centre, np.array([18.0, 25.0, 15.0]), scale)
        info["ventricle_scale"] = round(float(scale), 3)

    lesions: list[dict] = []
    if kind == "tumour":
        lesions = [_pick_tumour(rng, space, config)]
    elif kind == "ms":
        n = int(rng.integers(config.ms_count[0], config.ms_count[1] + 1))
        chosen = space.ms_sites[rng.choice(len(space.ms_sites), n, replace=False)]
        lesions = [_pick_ms(rng, space.atlas_point(zyx), config) for zyx in chosen]
    transform = _displacement_transform(displacement, field_ref)
    for lesion in lesions:
        lesion["centre"] = _invert_point(transform, lesion["atlas_centre"])
        if lesion.get("mass_effect", 0) > 0:
            displacement += _radial_field(points, lesion["centre"], np.full(3, lesion["radius"] * 1.2),
                                          lesion["mass_effect"])
    if any(lesion.get("mass_effect", 0) > 0 for lesion in lesions):
        transform = _displacement_transform(displacement, field_ref)
    return transform, lesions


def _acquired(rng: np.random.Generator, config: PhantomConfig, native: np.ndarray, brightest: float, skull: bool,
              native_ref: sitk.Image) -> sitk.Image:
    """The scanner's image of the resampled subject (channels: intensity, brain, lesion classes): bias
    field, Rician noise, a zero background where the scan is skull-stripped, int16 at a random gain."""
    values = native[..., 0] * _bias_field(rng, native.shape[:3], rng.uniform(*config.bias))
    sigma = np.float32(rng.uniform(*config.noise) * brightest)
    values = np.sqrt((values + sigma * rng.standard_normal(values.shape, dtype=np.float32)) ** 2
                     + (sigma * rng.standard_normal(values.shape, dtype=np.float32)) ** 2)
    if not skull:
        values *= native[..., 1] >= 0.5  # skull-stripped scans have an exact zero background
    gain = rng.uniform(300.0, 1500.0)
    out = sitk.GetImageFromArray(np.clip(np.round(values * gain), 0, 32767).astype(np.int16))
    out.CopyInformation(native_ref)
    return out


def _segmentation(native: np.ndarray, native_ref: sitk.Image, info: dict) -> sitk.Image:
    """Each voxel takes the class covering most of it (0 background, 1 core/lesion, 2 oedema)."""
    fractions = native[..., 2:]
    seg_array = np.where(fractions.sum(-1) >= 0.5, 1 + np.argmax(fractions, -1), 0).astype(np.uint8)
    seg = sitk.GetImageFromArray(seg_array)
    seg.CopyInformation(native_ref)
    info["lesion_ml"] = round(float((seg_array > 0).sum() * np.prod(native_ref.GetSpacing()) / 1000.0), 3)
    return seg


def _field_grid(space: _SubjectSpace) -> sitk.Image:
    spacing = np.array(space.grid["spacing"])
    size = np.ceil(np.array(space.grid["size"]) * spacing / FIELD_SPACING_MM).astype(int) + 1
    return reference_image({"size": size.tolist(), "spacing": [FIELD_SPACING_MM] * 3,
                            "origin": space.grid["origin"], "direction": space.grid["direction"]})


def _field_points(ref: sitk.Image) -> np.ndarray:
    """Physical coordinates (z, y, x, 3) of every field-grid point."""
    size = ref.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[..., ::-1]
    direction = np.array(ref.GetDirection()).reshape(3, 3)
    return np.array(ref.GetOrigin()) + (idx * np.array(ref.GetSpacing())) @ direction.T


def _smooth_random_field(rng: np.random.Generator, size: tuple, std_mm: float) -> np.ndarray:
    """Random displacement, smooth over ~4 cm: coarse normal values upsampled by a B-spline."""
    coarse = rng.standard_normal((5, 6, 6, 3)) * std_mm
    components = []
    for c in range(3):
        image = sitk.GetImageFromArray(coarse[..., c])
        image.SetSpacing([1.0, 1.0, 1.0])
        ref = sitk.Image([int(s) for s in size], sitk.sitkFloat64)
        ref.SetSpacing([(n - 1) / (m - 1) for n, m in zip((6, 6, 5), size, strict=True)])
        components.append(sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkBSpline)))
    return np.stack(components, -1)


def _radial_field(points: np.ndarray, centre: np.ndarray, sigma_mm: np.ndarray, amount: float) -> np.ndarray:
    """Displacement (subject -> atlas) that expands the region around ``centre`` by ``amount``."""
    offset = points - centre
    weight = np.exp(-0.5 * np.sum((offset / sigma_mm) ** 2, -1, keepdims=True))
    return -amount * weight * offset


def _displacement_transform(displacement: np.ndarray, ref: sitk.Image) -> sitk.DisplacementFieldTransform:
    image = sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True)
    image.CopyInformation(ref)
    return sitk.DisplacementFieldTransform(image)


def _invert_point(transform: sitk.Transform, target: np.ndarray, iterations: int = 20) -> np.ndarray:
    """The subject point that the (smooth, invertible) deformation maps onto ``target``."""
    point = np.array(target, float)
    for _ in range(iterations):
        point -= np.array(transform.TransformPoint(point.tolist())) - target
    return point


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise (texture of tissue), generated at half resolution."""
    small = sitk.GetImageFromArray(rng.standard_normal(tuple(s // 2 + 1 for s in shape), dtype=np.float32))
    small = sitk.SmoothingRecursiveGaussian(small, sigma_vox / 2)
    ref = sitk.Image([int(s) for s in shape[::-1]], sitk.sitkFloat32)
    ref.SetSpacing([0.5, 0.5, 0.5])
    noise = sitk.GetArrayFromImage(sitk.Resample(small, ref, sitk.Transform(), sitk.sitkLinear))
    return (noise - noise.mean()) / (noise.std() + 1e-8)


def _skull_layers(rng: np.random.Generator, distance: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Extra-cerebral CSF, dark bone and bright scalp as shells at set distances from the brain."""
    csf_end = rng.uniform(1.0, 3.0)
    bone_end = csf_end + rng.uniform(3.0, 6.0)
    scalp_end = bone_end + rng.uniform(3.0, 7.0)

    def shell(lo: float, hi: float) -> np.ndarray:
        return np.clip(distance - lo + 0.5, 0, 1) * np.clip(hi - distance + 0.5, 0, 1)

    scalp = rng.uniform(0.4, 0.7) * (1.0 + 0.15 * texture)
    return 0.9 * shell(0.0, csf_end) + 0.05 * shell(csf_end, bone_end) + scalp * shell(bone_end, scalp_end)


def _pick_tumour(rng: np.random.Generator, space: _SubjectSpace, config: PhantomConfig) -> dict:
    diameter = rng.uniform(*config.tumour_diameter_mm)
    # Deep enough that at least half of the tumour lies inside the brain.
    ok = space.tumour_depth > min(diameter / 4.0 + 5.0, 35.0)
    zyx = space.tumour_sites[ok][rng.integers(ok.sum())]
    mass = rng.uniform(0.0, 0.35) * diameter / config.tumour_diameter_mm[1] if rng.random() < 0.6 else 0.0
    return {"type": "tumour", "atlas_centre": space.atlas_point(zyx), "radius": diameter / 2.0,
            "core_fraction": rng.uniform(0.3, 0.7), "mass_effect": float(mass),
            # Oedema from faint to CSF-bright; cores necrotic (bright) or solid (intermediate).
            "oedema_contrast": rng.uniform(0.4, 1.0), "core_contrast": rng.uniform(0.1, 1.1)}


def _pick_ms(rng: np.random.Generator, centre: np.ndarray, config: PhantomConfig) -> dict:
    long_axis = rng.uniform(*config.ms_diameter_mm)
    return {"type": "ms", "atlas_centre": centre, "radius": long_axis / 2.0,
            "axes": [long_axis / 2.0, long_axis / 2.0 / rng.uniform(1.3, 2.5), long_axis / 2.0 / rng.uniform(1.3, 2.5)],
            "rotation": _random_rotation(rng, 180.0), "contrast": rng.uniform(0.45, 0.85)}


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*np.deg2rad(rng.uniform(-max_deg, max_deg, 3)))
    return np.array(transform.GetMatrix()).reshape(3, 3)


def _paint_lesion(rng, lesion, image, label, brain, tissue, contrast, ref) -> None:
    """Blend the lesion into ``image`` and mark it in ``label`` (both subject-space arrays)."""
    reach = lesion["radius"] * 1.4 + 3
    centre = np.array(ref.TransformPhysicalPointToContinuousIndex(lesion["centre"].tolist()))[::-1]
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, image.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    zyx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
    direction = np.array(ref.GetDirection()).reshape(3, 3)
    offset = ((zyx - centre)[..., ::-1] * np.array(ref.GetSpacing())) @ direction.T  # mm, x y z
    span = contrast.get("lesion", contrast["csf"]) - contrast["wm"]
    room = np.clip(1.5 * tissue[box], 0.0, 1.0) * brain[box]  # lesions grow in tissue, not in CSF
    local = image[box]
    if lesion["type"] == "tumour":
        radius = np.linalg.norm(offset, axis=-1)
        # Irregular outline: the radius is modulated by smooth noise of about +-25 %.
        ragged = radius / (1.0 + 0.25 * _smooth_noise(rng, radius.shape, sigma_vox=max(lesion["radius"] / 2, 2)))
        oedema = np.clip(lesion["radius"] - ragged + 0.5, 0, 1) * room
        core = np.clip(lesion["radius"] * lesion["core_fraction"] - ragged + 0.5, 0, 1) * brain[box]
        texture = 1.0 + 0.08 * _smooth_noise(rng, radius.shape, 1.5)
        oedema_value = (contrast["wm"] + lesion["oedema_contrast"] * span) * texture
        core_value = (contrast["wm"] + lesion["core_contrast"] * span) * texture
        local[:] = local * (1 - oedema) + oedema * oedema_value
        local[:] = local * (1 - core) + core * core_value
        label[box][(oedema >= 0.5) & (label[box] == 0)] = 2
        label[box][core >= 0.5] = 1
    else:
        axes = offset @ lesion["rotation"]
        radius = np.sqrt(np.sum((axes / np.array(lesion["axes"])) ** 2, -1))
        fraction = np.clip((1.0 - radius) * min(lesion["axes"]) + 0.5, 0, 1) * room
        value = contrast["wm"] + lesion["contrast"] * span
        local[:] = local * (1 - fraction) + fraction * value
        label[box][fraction >= 0.5] = 1


def _lesion_summary(lesion: dict) -> dict:
    keep = {k: v for k, v in lesion.items() if k not in ("atlas_centre", "centre", "rotation")}
    keep["centre_mm"] = [round(float(v), 2) for v in lesion["centre"]]
    return {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v) for k, v in keep.items()}


def _native_geometry(rng: np.random.Generator, config: PhantomConfig, space: _SubjectSpace):
    """A scanner grid (orientation, spacing, field of view) and the head pose inside it."""
    orientation = str(rng.choice(["axial-LPS", "axial-RAS", "axial-oblique", "coronal", "sagittal"],
                                 p=[0.3, 0.3, 0.2, 0.1, 0.1]))
    base = {"axial": np.eye(3), "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]),
            "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]])}[orientation.split("-")[0]]
    if orientation.endswith("RAS"):
        base = np.diag([-1.0, -1.0, 1.0]) @ base
    if orientation.endswith("oblique"):
        base = _random_rotation(rng, 20.0) @ base
    in_plane = float(rng.choice(IN_PLANE_MM))
    thickness = float(rng.choice(SLICE_MM))  # drawn either way: the rest of the subject stays the same
    thickness = config.slice_mm or thickness
    spacing = np.array([in_plane, in_plane, thickness])
    extent = np.array([rng.uniform(220, 256), rng.uniform(220, 256), rng.uniform(165, 200)])
    size = np.ceil(extent / spacing).astype(int)
    centre = space.centre + rng.uniform(-5, 5, 3)
    origin = centre - base @ ((size - 1) * spacing / 2.0)
    native_ref = reference_image({"size": size.tolist(), "spacing": spacing.tolist(),
                                  "origin": origin.tolist(), "direction": base.ravel().tolist()})
    # Head pose: scanner point -> subject point (rotation, head size, shift about the brain centre).
    scale = rng.uniform(*config.head_scale) * (1 + rng.uniform(-0.03, 0.03, 3))
    matrix = _random_rotation(rng, config.rotation_deg) @ np.diag(1.0 / scale)
    shift = rng.uniform(-1, 1, 3) * config.shift_mm
    pose = sitk.AffineTransform(matrix.ravel().tolist(), shift.tolist(), space.centre.tolist())
    return native_ref, {"transform": pose, "orientation": orientation, "head_scale": scale.round(4).tolist()}


def _slice_profile_blur(stack: sitk.Image, native_ref: sitk.Image, pose: sitk.Transform) -> sitk.Image:
    """Gaussian blur in subject space matching the scan's voxel size along the nearest axes."""
    native_axes = np.array(native_ref.GetDirection()).reshape(3, 3)
    to_subject = np.array(sitk.AffineTransform(pose).GetMatrix()).reshape(3, 3) @ native_axes
    subject_axes = np.array(stack.GetDirection()).reshape(3, 3)
    alignment = np.abs(subject_axes.T @ to_subject)  # [subject axis, native axis]
    sigma = np.array(native_ref.GetSpacing())[np.argmax(alignment, axis=1)] * 0.42  # FWHM ~ spacing
    return sitk.SmoothingRecursiveGaussian(stack, sigma.tolist())


def _bias_field(rng: np.random.Generator, shape: tuple, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field: exp of a random quadratic polynomial over the volume."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    log_field = np.zeros(shape, np.float32)
    for a in range(3):
        coords = axes[a].reshape([-1 if i == a else 1 for i in range(3)])
        log_field = log_field + (rng.normal(0, 1) * coords + rng.normal(0, 0.5) * coords**2).astype(np.float32)
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    log_field += np.float32(rng.normal(0, 0.5)) * x * y + np.float32(rng.normal(0, 0.5)) * y * z
    log_field *= np.float32(amplitude / (np.abs(log_field).max() + 1e-8))
    return np.exp(log_field)


# ----------------------------------------------------------------------------------------------
# Data sets on disk

def off_centre(image: sitk.Image) -> sitk.Image:
    """A head acquired again: 80 mm off the centre of a 400 x 400 x 300 mm field of view, 1.5 mm voxels."""
    size = [267, 267, 200]
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((np.array(image.GetSize()) - 1) / 2.0))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = centre + direction @ np.array([80.0, 80.0, 40.0]) - direction @ ((np.array(size) - 1) * 1.5 / 2)
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), [1.5] * 3,
                         image.GetDirection(), 0.0)


def with_neck(image: sitk.Image) -> sitk.Image:
    """A head acquired again with 180 mm more below it: a neck (a cylinder of muscle-like signal) widening
    into shoulders. ``image`` in LPS order (sitk.DICOMOrient), so that index z runs up the head."""
    spacing = image.GetSpacing()
    extra = int(round(180 / spacing[2]))
    below = [0, 0, extra]
    grown = sitk.ConstantPad(image, [0, 0, extra], [0, 0, 0], 0.0)
    array = sitk.GetArrayFromImage(grown).astype(np.float32)
    head = sitk.GetArrayViewFromImage(image)
    level = 0.6 * float(np.percentile(head[head > 0], 50))
    z, y, x = np.indices(array.shape[:1] + array.shape[1:], sparse=True)
    cy, cx = (np.array(array.shape[1:]) - 1) / 2
    depth = (below[2] - z) * spacing[2]  # mm below the head's lowest slice
    radius = np.where(depth < 90, 55.0, 55.0 + (depth - 90) * 1.5)  # shoulders widen from 90 mm down
    inside = ((y - cy) * spacing[1]) ** 2 / 1.2 + ((x - cx) * spacing[0]) ** 2 <= radius**2
    array = np.where((z < below[2]) & inside, level, array)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(grown)
    return out


def case_id(kind: str, index: int) -> str:
    return {"healthy": "PHH", "tumour": "PHT", "ms": "PHM"}[kind] + f"{index:03d}"


def write_case(out_dir: Path, kind: str, index: int, seed: int, config: PhantomConfig | None = None) -> dict:
    """Write one subject in the layout of its kind: IXI-like flat, or BraTS-like case folders."""
    name = case_id(kind, index)
    phantom = make_phantom(kind, seed * 100003 + index, config)
    if kind == "healthy":
        write_volume(phantom.image, out_dir / f"{name}-T2.nii.gz")
    else:
        write_volume(phantom.image, out_dir / name / f"{name}_t2.nii.gz")
        write_volume(phantom.seg, out_dir / name / f"{name}_seg.nii.gz")
    return {"case": name, **phantom.info}


def write_phantom_set(out_dir: str | Path, kind: str, count: int, seed: int = 0, workers: int = 2,
                      config: PhantomConfig | None = None, start: int = 1) -> list[dict]:
    """Write ``count`` subjects and a ``phantoms.json`` describing each (parameters, lesions)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = range(start, start + count)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(write_case, out_dir, kind, i, seed, config) for i in indices]
            infos = [f.result() for f in tqdm(futures, desc=f"phantom {kind}", unit="case")]
    else:
        infos = [write_case(out_dir, kind, i, seed, config) for i in tqdm(indices, desc=f"phantom {kind}", unit="case")]
    manifest = {"kind": kind, "seed": seed, "config": asdict(config or PhantomConfig()), "cases": infos}
    write_text_atomic(json.dumps(manifest, indent=1, default=_json_default) + "\n", out_dir / "phantoms.json")
    return infos


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
