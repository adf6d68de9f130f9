"""Shared fixtures: the bundled atlas and phantoms placed by a known affine in a known grid."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from maediff_core.atlas import Atlas
from maediff_core.diffusion_config import UNetConfig
from maediff_core.methods import get_config
from maediff_core.methods.cddpm.config import EncoderConfig
from maediff_core.methods.madad.config import AutoencoderConfig
from maediff_core.methods.patch.config import MAEConfig
from maediff_core.modelfile import load_card, rewrite_card
from maediff_core.phantom import PhantomConfig, make_phantom
from maediff_core.training import TrainConfig, Trainer
from maediff_core.volume_io import reference_image


def _share_the_cores() -> None:
    """Under pytest-xdist (`make test-core`: one worker per core), each worker and the processes it
    starts get their share of the cores, so that the workers do not fight over them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


_share_the_cores()


# Scanner axes of the three acquisition frames the registration must handle.
DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "oblique": np.array(sitk.Euler3DTransform((0, 0, 0), 0.25, -0.15, 0.35).GetMatrix()).reshape(3, 3),
}


@pytest.fixture(scope="session")
def atlas() -> Atlas:
    return Atlas.load()


def random_pose(rng: np.random.Generator, centre: np.ndarray) -> sitk.AffineTransform:
    """Scanner -> atlas mapping with rotations up to 15 deg, scaling up to 10 %, shifts up to 20 mm."""
    angles = np.deg2rad(rng.uniform(-15, 15, 3))
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), *angles).GetMatrix()).reshape(3, 3)
    matrix = rotation @ np.diag(rng.uniform(0.9, 1.1, 3))
    return sitk.AffineTransform(matrix.ravel().tolist(), rng.uniform(-20, 20, 3).tolist(), centre.tolist())


def native_grid(direction: np.ndarray, spacing: tuple[float, float, float], centre: np.ndarray,
                extent_mm: tuple[float, float, float] = (240.0, 240.0, 190.0)) -> sitk.Image:
    size = np.ceil(np.array(extent_mm) / np.array(spacing)).astype(int)
    origin = centre - direction @ ((size - 1) * np.array(spacing) / 2.0)
    return reference_image({"size": size.tolist(), "spacing": list(spacing), "origin": origin.tolist(),
                            "direction": direction.ravel().tolist()})


def posed_phantom(atlas: Atlas, frame: str, seed: int, kind: str = "healthy",
                  spacing=(0.9, 0.9, 2.5), skull: bool = True):
    """A phantom without anatomical deformation, so that ``pose`` is the exact truth."""
    rng = np.random.default_rng(seed)
    centre = np.array(atlas.template.TransformContinuousIndexToPhysicalPoint(
        (np.array(atlas.template.GetSize()) / 2.0).tolist()))
    pose = random_pose(rng, centre)
    grid = native_grid(DIRECTIONS[frame], spacing, centre)
    config = PhantomConfig(deform=False, skull_probability=1.0 if skull else 0.0)
    return make_phantom(kind, seed, config, atlas, native_grid=grid, pose=pose), pose


@pytest.fixture(scope="session")
def healthy_prepared(tmp_path_factory, atlas):
    """Four healthy phantoms through the real (fast-configured) preprocessing: a tiny cohort."""
    from maediff_core.datasets import prepare_dataset
    from maediff_core.volume_io import write_volume

    source = tmp_path_factory.mktemp("healthy")
    for i in range(1, 5):
        # On the atlas grid, so that registration can be skipped and the fixture stays quick.
        phantom = make_phantom("healthy", 100 + i, PhantomConfig(skull_probability=0.0), atlas,
                               native_grid=atlas.template, pose=sitk.AffineTransform(3))
        write_volume(phantom.image, source / f"PHH{i:03d}-T2.nii.gz")
    out = tmp_path_factory.mktemp("healthy_prepared")
    prepare_dataset(source, out, fast_preprocessing(), workers=2)
    return out


@pytest.fixture(scope="session")
def lesion_prepared(tmp_path_factory, atlas):
    """A lesion set of 3 (1 validation, 2 test volumes): the skull-stripped template with a bright sphere."""
    from maediff_core.datasets import prepare_dataset
    from maediff_core.volume_io import write_volume

    brain = sitk.GetArrayFromImage(sitk.Mask(atlas.template, atlas.brain_mask))
    centre = np.argwhere(brain > 0).mean(axis=0)
    grid = np.indices(brain.shape, sparse=True)
    raw = tmp_path_factory.mktemp("tumour")
    for i, offset in enumerate(([0, 0, 0], [6, 12, -15], [-8, -10, 12]), start=1):
        seg = sum((g - c) ** 2 for g, c in zip(grid, centre + offset, strict=True)) <= 8**2
        for name, array in (("t2", np.where(seg, brain.max(), brain)), ("seg", seg.astype(np.uint8))):
            image = sitk.GetImageFromArray(array)
            image.CopyInformation(atlas.template)
            write_volume(image, raw / f"PHT{i:03d}" / f"PHT{i:03d}_{name}.nii.gz")
    out = tmp_path_factory.mktemp("tumour_prepared")
    prepare_dataset(raw, out, fast_preprocessing(), workers=2)
    return out


def fast_preprocessing():
    """For phantoms written on the atlas grid without a skull: no registration, mask, N4 or smoothing."""
    from maediff_core.preprocess import PreprocessConfig

    return PreprocessConfig(register=False, mask_method="skull-stripped", bias_correction=False, smoothing=False)


# A MAEDiff with every part of the architecture, small enough to train in seconds.
TINY = replace(get_config("maediff-small"), name="maediff-tiny",
               unet=UNetConfig(channels=(16, 16, 16), res_blocks=1, attention=(False, False, True), head_channels=16,
                              norm_groups=8),
               mae=MAEConfig(encoder_depth=2, encoder_width=64, encoder_heads=2, decoder_depth=2,
                             decoder_width=64, decoder_heads=2))
# A cDDPM with every part (encoder, scale-shift blocks, ensemble of three levels), as small.
TINY_CDDPM = replace(get_config("cddpm-small"), name="cddpm-tiny",
                     unet=UNetConfig(channels=(16, 16, 16), res_blocks=1, attention=(False, False, False),
                                     head_channels=16, norm_groups=8),
                     encoder=EncoderConfig(block="basic", layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), features=32))
# A MAD-AD with every part (KL autoencoder, two-headed latent U-Net with attention and dropout), as small;
# at 16 channels its two-epoch model scored 0 everywhere on a healthy volume (test_madad.py).
TINY_MADAD = replace(get_config("madad-small"), name="madad-tiny",
                     unet=UNetConfig(channels=(32, 32, 32), res_blocks=1, attention=(False, False, True),
                                     head_channels=32),
                     latent=replace(get_config("madad-small").latent,
                                    autoencoder=AutoencoderConfig(channels=(16, 16, 32), res_blocks=1, norm_groups=8)))
# pDDPM and AnoDDPM as small, without attention but in the middle block, as theirs.
TINY_PDDPM = replace(get_config("pddpm-s48-small"), name="pddpm-tiny", unet=replace(TINY.unet, attention=(False,) * 3))
TINY_ANODDPM = replace(get_config("anoddpm-small"), name="anoddpm-tiny", unet=TINY_PDDPM.unet)
TINY_CONFIGS = {config.method: config for config in (TINY, TINY_PDDPM, TINY_ANODDPM, TINY_CDDPM, TINY_MADAD)}
FAST = TrainConfig(epochs=3, batch_size=4, slices_per_volume=4, val_slices=2, seed=1)


def run(folder, name, epochs, data, config=TINY, **settings):
    trainer = Trainer(config, replace(FAST, epochs=epochs, **settings), data, folder / name)
    trainer.resume()
    trainer.fit()
    return trainer


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, healthy_prepared):
    """The tiny MAEDiff trained for two epochs, with a decision threshold in its card."""
    folder = tmp_path_factory.mktemp("model")
    run(folder, "run", 2, healthy_prepared)
    card = load_card(folder / "run" / "best.json")
    card.threshold = 0.05
    rewrite_card(card, folder / "run" / "best.json")
    return folder / "run" / "best.json"


@pytest.fixture(scope="session")
def detection_run(tmp_path_factory, atlas, tiny_model):
    """One real `maediff detect --progress json` subprocess, read through the Slicer module's runner:
    a skull-stripped phantom tumour already in atlas space (registration is tested on its own),
    detected by the tiny model at 4 patch positions per slice."""
    import sys
    import time

    from maediff_core.volume_io import write_volume
    from MAEDiffAnomalyLib.runner import DetectionProcess, DetectRequest

    folder = tmp_path_factory.mktemp("detection")
    phantom = make_phantom("tumour", 31, PhantomConfig(skull_probability=0.0), atlas, native_grid=atlas.template,
                           pose=sitk.AffineTransform(3))
    path = write_volume(phantom.image, folder / "input.nii.gz")
    before = path.read_bytes()
    request = DetectRequest(path, folder / "out", model_path=tiny_model, device="cpu", no_register=True,
                            mask_method="skull-stripped", stride=48)
    process = DetectionProcess(request, sys.executable)
    deadline = time.time() + 900
    while process.running and time.time() < deadline:
        process.poll()
        time.sleep(0.1)
    ok, error = process.finished()
    assert ok, error
    return {"phantom": phantom, "folder": folder, "events": process.progress.events, "log": process.log,
            "input_unchanged": path.read_bytes() == before, "result_dir": process.result_dir}


