"""Native T2 volume -> model space (96 x 96 x 50 at 2 mm, intensities 0..1), and back.

The chain follows the reference protocol (docs/reference.md, "Data geometry"): resample to 1 mm, affine
registration to the atlas, brain mask, N4 bias-field correction, curvature-flow smoothing,
downsampling to the model grid and percentile scaling inside the brain. Every step can be switched
off and is recorded; the record holds the affine that maps atlas points to input points, so any
model-space array can be put back on the input's own voxels (:func:`to_native`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atlas import Atlas
from .errors import InputError
from .files import write_text_atomic
from .preprocess_config import PreprocessConfig
from .timing import Laps
from .volume_io import geometry_of, image_from_array, read_volume, reference_image, resample_isotropic, write_volume

# The steps of the chain, in order, with the share of its time each has ended by (measured on the
# demo case, 2 cores: registration and mask ~11 s, N4 ~7 s of ~26 s), for progress reports.
STEPS = {"resample_1mm": 0.05, "register": 0.45, "brain_mask": 0.6, "bias_correction": 0.85, "smoothing": 0.95,
         "model_space": 1.0}
# "Not a head" checks. The atlas mask after an affine fit holds 1600-1800 mL on heads (and on noise, so
# registration decides): final mutual information 0.54-0.67 on the sample and phantoms, 0.22 on a
# sphere, 0.01 on noise (measured, default settings).
PLAUSIBLE_BRAIN_ML = (900, 2500)
MIN_HEAD_EXTENT_MM = 100  # an adult brain spans 120-170 mm along each axis
MIN_BRAIN_IN_VIEW = 0.9  # of the atlas brain inside the field of view; less: a partial-brain acquisition
MIN_REGISTRATION_MI = 0.35
# Of the brain's 99th percentile: below it the `atlas` mask drops bone, air and background, and so the
# 1st percentile of an `atlas` mask sits near it (docs/brain-mask.md, "The intensity range").
INTENSITY_FLOOR = 0.1
# The B-spline stage of the `atlas-deformable` mask (docs/brain-mask.md): control points about 32 mm
# apart over the atlas box, fitted at 4 mm on a tenth of the brain's neighbourhood (4 mm around the atlas
# brain) in 20 L-BFGS-B steps: Dice 0.98 with a skull in about 4 s; 50 steps at 2 mm gained 0.003 in 22 s.
DEFORMABLE_MESH = (6, 6, 5)
DEFORMABLE_SHRINK = 4
DEFORMABLE_MARGIN_MM = 4
DEFORMABLE_SAMPLING = 0.1
DEFORMABLE_ITERATIONS = 20
# Command lines of optional external skull strippers, as their own documentation gives them ({input},
# {output}: the stripped image, {mask}: the mask, where the tool takes its path; HD-BET writes its mask
# beside {output} as brain_mask.nii.gz or brain_bet_mask.nii.gz, by version). docs/brain-mask.md.
EXTERNAL_STRIPPERS = {
    "hd-bet": ["hd-bet", "-i", "{input}", "-o", "{output}"],
    "deepbet": ["deepbet-cli", "-i", "{input}", "-o", "{output}", "-m", "{mask}"],
    "synthstrip": ["mri_synthstrip", "-i", "{input}", "-o", "{output}", "-m", "{mask}"],
}


@dataclass
class Preprocessed:
    """Model-space image (z, y, x) in 0..1, its brain mask, and the record to go back."""

    image: np.ndarray
    mask: np.ndarray
    record: dict = field(default_factory=dict)

    def image_sitk(self) -> sitk.Image:
        return image_from_array(self.image.astype(np.float32), self.record["model_grid"])

    def mask_sitk(self) -> sitk.Image:
        return image_from_array(self.mask.astype(np.uint8), self.record["model_grid"])

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """``image.nii.gz``, ``mask.nii.gz`` and, last (it marks the folder complete), ``record.json``."""
        folder = Path(folder)
        write_volume(self.image_sitk(), folder / "image.nii.gz")
        write_volume(self.mask_sitk(), folder / "mask.nii.gz")
        write_text_atomic(json.dumps({**self.record, **(extra or {})}, indent=1) + "\n", folder / "record.json")
        return folder


def preprocess(
    native: sitk.Image,
    config: PreprocessConfig | None = None,
    atlas: Atlas | None = None,
    mask: sitk.Image | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Preprocessed:
    """Run the chain on ``native`` (never modified). ``mask`` is needed for ``mask_method='file'``;
    ``on_step`` hears the name of each step as it ends (:data:`STEPS`)."""
    config = config or PreprocessConfig()
    atlas = atlas or Atlas.load(config.atlas)
    if config.mask_method == "file" and mask is None:
        raise InputError("mask_method 'file' needs a brain mask volume")
    lap = Laps(on_step)
    head = in_atlas_space(native, config, atlas, mask, lap)
    image, brain = sitk.Mask(head.image, head.brain), head.brain

    if config.bias_correction:
        image = n4_correct(image, brain, config)
    lap("bias_correction")
    if config.smoothing:
        image = sitk.CurvatureFlow(image, config.smoothing_time_step, config.smoothing_iterations)
    lap("smoothing")

    grid = atlas.model_grid
    model_ref = reference_image(grid)
    model_image = sitk.Resample(image, model_ref, sitk.Transform(), sitk.sitkBSpline, 0.0)
    brain_fraction = sitk.Resample(sitk.Cast(brain, sitk.sitkFloat32), model_ref, sitk.Transform(), sitk.sitkLinear,
                                   0.0)
    model_mask = brain_fraction >= 0.5
    mask_array = sitk.GetArrayFromImage(model_mask).astype(bool)
    if mask_array.sum() < 1000:
        raise InputError(
            f"brain mask covers only {int(mask_array.sum())} model voxels: the registration or the"
            " mask failed (is this a brain T2 volume?)"
        )
    array = sitk.GetArrayFromImage(model_image)
    low, high = intensity_range(array[mask_array], config)
    if high <= low:
        raise InputError("the brain has no intensity contrast after preprocessing")
    array = np.clip((array - low) / (high - low), 0.0, 1.0) * mask_array
    lap("model_space")

    record = {
        "config": asdict(config),
        "native_grid": geometry_of(native),
        "atlas_grid": geometry_of(atlas.template),
        "model_grid": grid,
        "atlas_to_native": affine_to_dict(head.transform),
        "intensity_range": [float(low), float(high)],
        "brain_ml": float(mask_array.sum() * np.prod(grid["spacing"]) / 1000.0),
        "brain_in_view": round(brain_in_view(atlas, head.view), 4),
        "registration_mi": head.information,
        "timings_s": lap.seconds,
    }
    record["warnings"] = head_warnings(record)
    return Preprocessed(array.astype(np.float32), mask_array, record)


@dataclass
class AtlasSpace:
    """The input on the atlas grid, before its brain is cut out: what registration and the mask give."""

    image: sitk.Image  # the whole head, one interpolation from the input
    brain: sitk.Image  # the brain mask (uint8)
    transform: sitk.AffineTransform  # atlas point -> input point
    information: float | None  # the registration's mutual information (None: not registered)
    view: sitk.Image  # the atlas voxels inside the scanned field of view


def in_atlas_space(native: sitk.Image, config: PreprocessConfig, atlas: Atlas, mask: sitk.Image | None = None,
                   lap: Callable[[str], None] = lambda step: None) -> AtlasSpace:
    """Registration and brain mask: the steps up to ``brain_mask`` of :func:`preprocess`."""
    moving = sitk.Cast(native, sitk.sitkFloat32)
    if config.register and config.resample_1mm:
        moving = resample_isotropic(moving, config.registration_mm)
    lap("resample_1mm")
    information = None
    if config.register:
        transform, information = register_affine(moving, atlas, config)
    else:
        transform = sitk.AffineTransform(3)
    lap("register")
    # One interpolation from the input itself: the resampled copy only serves the registration.
    image = sitk.Resample(sitk.Cast(native, sitk.sitkFloat32), atlas.template, transform, sitk.sitkLinear, 0.0)
    view = field_of_view(native, atlas.template, transform)
    brain = brain_mask(native, image, transform, atlas, config, mask, view)
    lap("brain_mask")
    return AtlasSpace(image, brain, transform, information, view)


def preprocess_file(path: str | Path, config: PreprocessConfig | None = None, atlas: Atlas | None = None,
                    mask_path: str | Path | None = None) -> Preprocessed:
    mask = read_volume(mask_path) if mask_path else None
    warnings: list[str] = []
    result = preprocess(read_volume(path, warnings), config, atlas, mask)
    result.record["input"] = str(path)
    result.record["warnings"] = [*warnings, *result.record["warnings"]]
    return result


def register_affine(moving: sitk.Image, atlas: Atlas, config: PreprocessConfig) -> tuple[sitk.AffineTransform, float]:
    """Rigid then affine Mattes-MI registration; returns the atlas -> input point mapping and the
    final mutual information (nats, >= 0: how much the input's intensities say about the atlas's)."""
    fixed = atlas.template
    # The moments initialiser needs non-negative intensities (docs/reference.md, measured note).
    moving = sitk.Clamp(moving, lowerBound=0.0)
    if sitk.GetArrayViewFromImage(moving).max() <= 0:
        raise InputError("no voxel is above 0: an MR magnitude image is non-negative (is this a phase or"
                          " difference image, or were its intensities inverted?)")
    # SimpleITK < 2.4 (Slicer 5.6/5.8) returns a generic Transform here: rewrap it as the rigid type.
    initial = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    ))
    # The metric looks at the brain and a margin, not at the empty corners of the box. The rigid
    # stage needs the head's outline (8 mm) to be caught from far off; the affine stage looks at the
    # brain and 3 mm only, since the template is skull-stripped and with 8 mm the free scales of
    # skull-on heads stretched the brain onto the skull (determinant 1.30 for a true 0.83).
    rigid_region, affine_region = atlas.brain_mask_grown(8), atlas.brain_mask_grown(3)

    def run(transform: sitk.Transform, region: sitk.Image, shrink: tuple[int, ...],
            smoothing: tuple[float, ...]) -> float:
        # 5 % of an 8 mm grid is a few hundred points, and which few hundred decided between 0.4 and
        # 15 mm: coarser levels keep the finest level's number of samples.
        finest = min(shrink)
        sampling = [min(1.0, config.registration_sampling * (s / finest) ** 3) for s in shrink]
        method = mutual_information_method(region, shrink, smoothing, sampling, config.seed)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-3, numberOfIterations=config.registration_iterations, relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-6,
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(transform, inPlace=True)
        execute(method, fixed, moving, "registration to the atlas")
        return -method.GetMetricValue()  # ITK minimises the negative mutual information

    run(initial, rigid_region, config.registration_shrink, config.registration_smoothing_mm)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(initial.GetMatrix())
    affine.SetTranslation(initial.GetTranslation())
    affine.SetCenter(initial.GetCenter())
    # From the 8 mm pyramid level the free scales drifted onto the skull on 2 of 24 random poses
    # (8-10 mm errors); from the rigid result the finer levels alone stay in the brain's basin.
    fine = slice(1, None) if len(config.registration_shrink) > 1 else slice(None)
    information = run(affine, affine_region, config.registration_shrink[fine], config.registration_smoothing_mm[fine])
    return affine, information


def mutual_information_method(region: sitk.Image, shrink: Sequence[int], smoothing_mm: Sequence[float],
                              sampling: Sequence[float], seed: int) -> sitk.ImageRegistrationMethod:
    """Mattes mutual information (the template is T1, the input T2) on seeded random samples of the
    fixed image's ``region``, over a pyramid; the caller adds the optimiser and the transform."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(list(sampling), seed + 1)  # SimpleITK reads 0 as "wall clock"
    method.SetMetricFixedMask(region)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def execute(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, what: str) -> None:
    """Run a registration; ITK's failure reaches the user as an InputError naming ``what`` failed."""
    try:
        method.Execute(fixed, moving)
    except RuntimeError as err:
        raise InputError(f"{what} failed: {str(err).strip().splitlines()[-1]}") from err


def head_warnings(record: dict) -> list[str]:
    """Why an input may not be a head, from what preprocessing measured: the brain mask's volume and
    how well the input's intensities match the atlas's after registration."""
    warnings = []
    grid = record["native_grid"]
    extent = [size * spacing for size, spacing in zip(grid["size"], grid["spacing"], strict=True)]
    if min(extent) < MIN_HEAD_EXTENT_MM:
        warnings.append(f"the volume spans only {' x '.join(f'{e:.0f}' for e in extent)} mm; a brain needs"
                        f" {MIN_HEAD_EXTENT_MM} mm or more along every axis: is this a whole-brain volume?")
    in_view = record.get("brain_in_view", 1.0)
    if in_view < MIN_BRAIN_IN_VIEW:
        warnings.append(f"the volume holds {100 * in_view:.0f} % of the brain: lesions are searched only where it "
                        "was scanned, and a partial brain registers less reliably")
    brain_ml, information = record["brain_ml"], record.get("registration_mi")
    if not PLAUSIBLE_BRAIN_ML[0] <= brain_ml <= PLAUSIBLE_BRAIN_ML[1]:
        warnings.append(f"the brain mask holds {brain_ml:.0f} mL (a head gives {PLAUSIBLE_BRAIN_ML[0]}.."
                        f"{PLAUSIBLE_BRAIN_ML[1]} mL): is this a brain volume?")
    if information is not None and information < MIN_REGISTRATION_MI:
        warnings.append(f"the registration matched the atlas poorly (mutual information {information:.2f}, heads"
                        f" give {MIN_REGISTRATION_MI} or more): is this a brain volume? Check the reconstruction")
    return warnings


def brain_mask(native: sitk.Image, image: sitk.Image, transform: sitk.Transform, atlas: Atlas,
               config: PreprocessConfig, user_mask: sitk.Image | None, view: sitk.Image) -> sitk.Image:
    """Brain mask on the atlas grid, by the configured method, inside the field of view ``view``."""
    method = config.mask_method
    if method == "atlas":
        mask = refine_atlas_mask(image, atlas)
    elif method == "atlas-deformable":
        mask = deformable_atlas_mask(image, atlas, config)
    else:
        if method == "skull-stripped":
            native_mask = native > 0  # the stripper already zeroed everything but the brain
        elif method == "file":
            native_mask = user_mask
        else:
            native_mask = run_external_stripper(method, native)
        if native_mask.GetSize() != native.GetSize():
            raise InputError(
                f"brain mask size {native_mask.GetSize()} differs from the volume's {native.GetSize()}"
            )
        native_mask = sitk.Cast(native_mask > 0, sitk.sitkUInt8)
        native_mask.CopyInformation(native)
        mask = sitk.Resample(native_mask, atlas.template, transform, sitk.sitkNearestNeighbor, 0)
    # Only what was scanned: outside the input's field of view the image is a zero fill, not dark brain.
    mask = sitk.And(sitk.Cast(mask, sitk.sitkUInt8), view)
    if sitk.GetArrayViewFromImage(mask).sum() == 0:
        raise InputError(f"brain mask ({method}) is empty in atlas space")
    return mask


def intensity_range(values: np.ndarray, config: PreprocessConfig) -> tuple[float, float]:
    """The brain intensities that become 0 and 1: the configured percentiles of ``values``.

    Models learn this range on `atlas` masks, whose widened, floored edge holds partial-volume voxels
    down to :data:`INTENSITY_FLOOR`, so their 1st percentile sits near it. The `atlas-deformable` mask
    ends in the CSF on a head with its skull, its 1st percentile is white matter (0.37 to 0.48 of the
    99th, against 0.03 to 0.14 skull-stripped) and the whole brain came out darker: the floor caps it.
    """
    low, high = (float(v) for v in np.percentile(values, config.percentiles))
    if config.mask_method == "atlas-deformable":
        low = min(low, INTENSITY_FLOOR * high)
    return low, high


def field_of_view(native: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """The voxels of ``grid`` that lie inside the scanned volume ``native``."""
    inside = sitk.Image(native.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(native)
    return sitk.Resample(inside, grid, transform, sitk.sitkNearestNeighbor, 0)


def brain_in_view(atlas: Atlas, view: sitk.Image) -> float:
    """The fraction of the atlas brain inside the input's field of view ``view`` (on the atlas grid)."""
    brain = sitk.GetArrayViewFromImage(atlas.brain_mask) > 0
    inside = sitk.GetArrayViewFromImage(view) > 0
    return float((brain & inside).sum() / brain.sum())


def refine_atlas_mask(image: sitk.Image, atlas: Atlas) -> sitk.Image:
    """The atlas brain mask, widened a little and trimmed to the image's non-dark tissue.

    After an affine registration the atlas outline misses individual anatomy by a few mm: a 2 mm
    dilation admits brain just outside it (more would admit the bright extra-cerebral CSF), and the
    intensity floor (a tenth of the brain's 99th percentile) drops the dark bone, air and background
    that the dilation let in.
    """
    wide = atlas.brain_mask_grown(2)
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(atlas.brain_mask) > 0]
    floor = INTENSITY_FLOOR * float(np.percentile(values, 99)) if values.size else 0.0
    tissue = sitk.And(wide, image > floor)
    core = atlas.brain_mask_grown(-3)  # deep brain stays in even if dark (lesions)
    mask = sitk.BinaryMorphologicalClosing(sitk.Or(tissue, core), [2, 2, 2])
    return sitk.BinaryFillhole(largest_component(mask))


def deformable_atlas_mask(image: sitk.Image, atlas: Atlas, config: PreprocessConfig) -> sitk.Image:
    """The atlas brain mask warped onto ``image`` (the input on the atlas grid, after the affine) by a
    coarse B-spline registration of the atlas template.

    The affine misses each head's own shape by 2 to 6 mm, and with a skull what lies there is the
    bright extra-cerebral CSF, which no intensity floor tells from cortex; the warped outline follows
    the subject's brain itself, so no widening or trimming is applied after it (docs/brain-mask.md).
    """
    transform = sitk.BSplineTransformInitializer(image, list(DEFORMABLE_MESH), order=3)
    region = atlas.brain_mask_grown(DEFORMABLE_MARGIN_MM)
    method = mutual_information_method(region, [DEFORMABLE_SHRINK], [DEFORMABLE_SHRINK / 2], [DEFORMABLE_SAMPLING],
                                       config.seed)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=DEFORMABLE_ITERATIONS,
                                maximumNumberOfCorrections=5)
    method.SetInitialTransform(transform, inPlace=True)
    execute(method, image, atlas.template, "deformable registration of the atlas")
    warped = sitk.Resample(atlas.brain_mask, image, transform, sitk.sitkNearestNeighbor, 0)
    return largest_component(warped)


def largest_component(mask: sitk.Image) -> sitk.Image:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.Cast(mask > 0, sitk.sitkUInt8)))
    return sitk.Cast(labels == 1, sitk.sitkUInt8)


def run_external_stripper(method: str, native: sitk.Image) -> sitk.Image:
    """Skull-strip with an installed external tool (optional plug-in; never required)."""
    command = EXTERNAL_STRIPPERS[method]
    if shutil.which(command[0]) is None:
        raise InputError(
            f"mask method '{method}' needs the '{command[0]}' command, which is not installed;"
            " use 'atlas' (built in), 'skull-stripped' or a mask file instead"
        )
    with tempfile.TemporaryDirectory(prefix="maediff-strip-") as tmp:
        src, dst = Path(tmp) / "input.nii.gz", Path(tmp) / "brain.nii.gz"
        sitk.WriteImage(native, str(src))
        args = [part.format(input=src, output=dst, mask=Path(tmp) / "brain_mask.nii.gz") for part in command]
        done = subprocess.run(args, capture_output=True, encoding="utf-8", errors="replace")
        if done.returncode != 0:
            raise InputError(f"{command[0]} failed: {done.stderr.strip()[-500:]}")
        candidates = sorted(Path(tmp).glob("brain*mask*.nii.gz")) or [dst]
        if not candidates[0].is_file():
            raise InputError(f"{command[0]} wrote no brain mask ({' '.join(map(str, args))})")
        return read_volume(candidates[0])


def n4_correct(image: sitk.Image, mask: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """N4 fitted on a shrunken copy; the bias field is then evaluated at full resolution."""
    shrink = [config.n4_shrink] * 3
    small = sitk.Shrink(image, shrink)
    small_mask = sitk.Shrink(mask, shrink)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(config.n4_iterations))
    n4.SetConvergenceThreshold(config.n4_tolerance)
    # N4 works on the log of the intensities: zero voxels inside the mask would break it.
    n4.Execute(sitk.Clamp(small, lowerBound=1e-3), small_mask)
    log_bias = n4.GetLogBiasFieldAsImage(image)
    return sitk.Mask(image / sitk.Exp(log_bias), mask)


def affine_to_dict(affine: sitk.AffineTransform) -> dict:
    """The atlas -> native point mapping as a 4x4 matrix (plain JSON)."""
    matrix = np.array(affine.GetMatrix()).reshape(3, 3)
    centre = np.array(affine.GetCenter())
    offset = np.array(affine.GetTranslation()) + centre - matrix @ centre
    homogeneous = np.eye(4)
    homogeneous[:3, :3] = matrix
    homogeneous[:3, 3] = offset
    return {"matrix_4x4": homogeneous.tolist()}


def affine_from_record(record: dict) -> sitk.AffineTransform:
    homogeneous = np.array(record["atlas_to_native"]["matrix_4x4"], dtype=float)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(homogeneous[:3, :3].ravel().tolist())
    affine.SetTranslation(homogeneous[:3, 3].tolist())
    return affine


def to_native(model_array: np.ndarray, record: dict, labels: bool = False) -> sitk.Image:
    """Put a model-space array (z, y, x) on the original input grid.

    Scores and images are interpolated linearly, label maps by nearest neighbour so that every
    label keeps its position; input voxels outside the model box get 0.
    """
    grid = record["model_grid"]
    expected = tuple(int(s) for s in grid["size"][::-1])
    if model_array.shape != expected:
        raise InputError(f"model-space array has shape {model_array.shape}, expected {expected}")
    dtype = np.int32 if labels else np.float32
    moving = image_from_array(model_array.astype(dtype), grid)
    native_ref = reference_image(record["native_grid"])
    inverse = affine_from_record(record).GetInverse()
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.Resample(moving, native_ref, inverse, interpolator, 0, moving.GetPixelID())


def to_model(native_image: sitk.Image, record: dict, labels: bool = False) -> np.ndarray:
    """Put an image on the input grid (e.g. a ground-truth segmentation) onto the model grid."""
    grid = record["model_grid"]
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    image = native_image if labels else sitk.Cast(native_image, sitk.sitkFloat32)
    out = sitk.Resample(image, reference_image(grid), affine_from_record(record), interpolator, 0)
    return sitk.GetArrayFromImage(out)
