"""Hostile inputs that must fail fast and specifically, and kills that must lose nothing: checkpoint
pairs killed at every rename, damaged checkpoints, malformed cards, cards pointing outside their
folder, inputs that are not heads. (Volume files, result folders and detection options: see
test_volume_io.py and test_detect.py.)"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import FAST, TINY, run
from dicom_series import write_dicom_series

from maediff_core.detect import preprocess_settings
from maediff_core.errors import CardError, InputError
from maediff_core.modelfile import load_card, load_model, pairs, read_pair, recover_pair, save_model, save_pair
from maediff_core.preprocess import PreprocessConfig, head_warnings, preprocess
from maediff_core.training import Trainer

# -- checkpoint pairs ---------------------------------------------------------------------------
from maediff_core.volume_io import read_volume

# -- checkpoint pairs ---------------------------------------------------------------------------


def _save_and_die_at_rename(path, epoch: int, rename: int) -> None:
    """In a child: save pair ``epoch``, killed (no cleanup runs) just before the ``rename``-th rename."""
    calls = []
    real = os.replace

    def replace_or_die(src, dst):
        calls.append(dst)
        if len(calls) == rename:
            os._exit(9)
        real(src, dst)

    pairs.os.replace = replace_or_die
    save_pair({"w": torch.full((4,), float(epoch))}, {"epoch": epoch}, path)
    os._exit(0)


@pytest.mark.parametrize("rename", [1, 2, 3, 4], ids=["pending", "weights", "card", "none"])
def test_a_checkpoint_pair_killed_at_any_rename_is_the_old_or_the_new(tmp_path, rename):
    """save_pair renames three times (pending card, weights, card): a kill before any of them, then
    the next start's recovery, leaves a pair whose weights are the ones its card was saved with."""
    path = tmp_path / "last"
    save_pair({"w": torch.full((4,), 1.0)}, {"epoch": 1}, path)
    child = multiprocessing.get_context("fork").Process(target=_save_and_die_at_rename, args=(path, 2, rename))
    child.start()
    child.join()
    assert child.exitcode == (0 if rename == 4 else 9)
    recover_pair(path)
    weights, record = read_pair(path)
    from safetensors.torch import load_file

    assert load_file(str(weights))["w"][0].item() == record["epoch"]
    assert record["epoch"] == (1 if rename < 3 else 2)  # the weights' rename is the commit point
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]  # nothing left over


def test_a_damaged_checkpoint_is_refused_on_resume_and_leftovers_are_swept(tmp_path, healthy_prepared):
    run(tmp_path, "run", 1, healthy_prepared)
    folder = tmp_path / "run"
    (folder / ".best.json.x1y2z3").write_text("{")  # temporary files of a killed save
    (folder / ".last.safetensors.a1b2c3").write_bytes(b"\0" * 10)
    trainer = Trainer(TINY, replace(FAST, epochs=2), healthy_prepared, folder)
    assert trainer.resume() and trainer.epoch == 1
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    weights = folder / "last.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(CardError, match="last.safetensors: does not match last.json .damaged or replaced"):
        Trainer(TINY, replace(FAST, epochs=2), healthy_prepared, folder).resume()
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CardError, match="does not match last.json"):
        Trainer(TINY, replace(FAST, epochs=2), healthy_prepared, folder).resume()
    with pytest.raises(CardError, match="best.safetensors: does not match best.json"):
        (folder / "best.safetensors").write_bytes(weights.read_bytes())
        load_model(folder / "best.json")


# -- model cards --------------------------------------------------------------------------------


def _card_with(tiny_model, tmp_path, change) -> str:
    card = json.loads(tiny_model.read_text())
    change(card)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(card))
    (tmp_path / "broken.safetensors").write_bytes(tiny_model.with_suffix(".safetensors").read_bytes())
    return path


BROKEN_CARDS = {
    "channels abc": (lambda c: c["config"]["unet"].update(channels="abc"), r"config\.unet\.channels: expected a list"),
    "stride text": (lambda c: c["config"]["patch"].update(stride="16"),
                    r"config\.patch\.stride: expected an integer, got '16'"),
    "timesteps text": (lambda c: c["config"]["diffusion"].update(timesteps="1000"),
                       r"diffusion\.timesteps: expected an integer"),
    "t_test beyond T": (lambda c: c["config"]["diffusion"].update(t_test=5000),
                        r"config\.diffusion: t-test must be one or more levels in 1\.\.1000, got 5000"),
    "stride not tiling": (lambda c: c["config"]["patch"].update(stride=20), r"stride 20 does not tile 96"),
    "percentiles abc": (lambda c: c["preprocessing"].update(percentiles="abc"),
                        r"preprocessing\.percentiles: expected a list"),
    "unknown preprocessing": (lambda c: c["preprocessing"].update(sharpen=True),
                              r"preprocessing: unknown setting\(s\) sharpen"),
    "threshold abc": (lambda c: c.update(threshold="abc"), r"threshold: expected a finite number, got 'abc'"),
    "threshold NaN": (lambda c: c.update(threshold=float("nan")), r"threshold: expected a finite number, got nan"),
    "threshold negative": (lambda c: c.update(threshold=-1), r"threshold: must be >= 0"),
    "unknown method": (lambda c: c["config"].update(method="magic"), r"method must be one of"),
    "no config": (lambda c: c.pop("config"), r"no 'config' object"),
}


@pytest.mark.parametrize("case", BROKEN_CARDS, ids=list(BROKEN_CARDS))
def test_a_malformed_card_is_refused_in_seconds_with_its_key(tmp_path, tiny_model, case):
    change, message = BROKEN_CARDS[case]
    path = _card_with(tiny_model, tmp_path, change)
    with pytest.raises(CardError, match=message):
        load_card(path)


def test_a_huge_network_is_refused_before_it_is_built(tmp_path, tiny_model):
    path = _card_with(tiny_model, tmp_path, lambda c: c["config"]["unet"].update(channels=[2048, 4096, 4096]))
    with pytest.raises(CardError, match=r"M parameters .* the limit is 1000 M"):
        load_model(path)


def test_weights_of_another_shape_are_refused_from_the_header(tmp_path, tiny_model):
    path = _card_with(tiny_model, tmp_path, lambda c: c["config"]["unet"].update(channels=[64, 64, 64]))
    with pytest.raises(CardError, match=r"do not fit the configuration .*wrong shapes \['unet\."):
        load_model(path)


def test_detect_refuses_a_broken_card_before_reading_the_input(tmp_path, tiny_model):
    path = _card_with(tiny_model, tmp_path, BROKEN_CARDS["threshold abc"][0])
    done = subprocess.run([sys.executable, "-m", "maediff_core.cli", "detect", str(tmp_path / "absent.nii.gz"),
                           "-o", str(tmp_path / "out"), "--model", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "threshold: expected a finite number, got 'abc'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_a_card_may_not_point_preprocessing_outside_its_folder(tmp_path, tiny_model, atlas):
    outside = _card_with(tiny_model, tmp_path, lambda c: c["preprocessing"].update(atlas="/etc"))
    with pytest.raises(CardError, match="names the atlas /etc, outside the model's folder .* pass --atlas /etc"):
        preprocess_settings(load_card(outside))
    assert preprocess_settings(load_card(outside), atlas=str(atlas.folder)).atlas == str(atlas.folder)  # the user's
    inside = _card_with(tiny_model, tmp_path, lambda c: c["preprocessing"].update(atlas="my-atlas"))
    assert preprocess_settings(load_card(inside)).atlas == str((tmp_path / "my-atlas").resolve())
    escaping = tmp_path / "escaping"
    escaping.mkdir()
    info = json.loads((atlas.folder / "atlas.json").read_text())
    info["files"]["t1"] = "../../../../../../etc/hostname"
    (escaping / "atlas.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="names ../../.*/etc/hostname, outside the atlas folder"):
        preprocess(sitk.Image([8, 8, 8], sitk.sitkFloat32) + 1, PreprocessConfig(atlas=str(escaping)))


def test_weights_with_nan_are_refused_when_loaded(tmp_path, tiny_model):
    model, card = load_model(tiny_model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_model(model, card, tmp_path / "diverged")
    with pytest.raises(CardError, match=r"diverged.safetensors: 1 tensor\(s\) hold NaN or infinite values"):
        load_model(tmp_path / "diverged.json")


@pytest.mark.parametrize("argv, message", [
    (["detect", "x.nii.gz", "-o", "out", "--stride=-16"], "--stride: must be a positive integer, got -16"),
    (["detect", "x.nii.gz", "-o", "out", "--batch-size", "0"], "--batch-size: must be a positive integer, got 0"),
    (["train", "--data", "d", "--config", "maediff-small", "-o", "r", "--lr", "nan"],
     "--lr: must be a finite number > 0"),
    (["train", "--data", "d", "--config", "maediff-small", "-o", "r", "--epochs", "0"], "--epochs: must be a positive"),
    (["prepare", "d", "-o", "p", "--workers", "-2"], "--workers: must be a positive integer, got -2"),
])
def test_option_abuses_are_refused_by_the_parser(argv, message, capsys):
    from maediff_core.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


# -- inputs that are not what they claim ----------------------------------------------------------


def test_dicom_series_with_a_missing_or_moved_slice_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 500, (12, 16, 16)).astype(np.int16))
    image.SetSpacing((0.9, 0.9, 3.0))
    files = write_dicom_series(image, tmp_path / "gap")
    os.unlink(files[5])
    with pytest.raises(InputError, match=r"slices missing or unevenly spaced: 6\.00 mm between slices 5 and 6 "
                                          r"where the series is spaced 3\.00 mm"):
        read_volume(tmp_path / "gap")
    moved = sitk.ReadImage(files[8])
    position = [float(v) for v in moved.GetMetaData("0020|0032").split("\\")]
    moved.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in (*position[:2], position[2] + 1.5)))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(files[8])
    writer.Execute(moved)
    with pytest.raises(InputError, match="unevenly spaced"):
        read_volume(tmp_path / "gap")


def test_implausible_spacing_per_axis_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    image.SetSpacing((0.06, 0.06, 1.0))
    sitk.WriteImage(image, str(tmp_path / "tiny.nii.gz"))
    with pytest.raises(InputError, match=r"implausible voxel spacing \(0\.06, 0\.06, 1\.0\) mm"):
        read_volume(tmp_path / "tiny.nii.gz")


def test_an_all_negative_image_is_refused_with_its_reason(atlas):
    image = sitk.GetImageFromArray(-1.0 - np.random.default_rng(0).random((40, 48, 48)).astype(np.float32))
    image.SetSpacing((4.0, 4.0, 4.0))
    with pytest.raises(InputError, match="no voxel is above 0: an MR magnitude image is non-negative"):
        preprocess(image, PreprocessConfig(), atlas)


def test_noise_is_flagged_as_not_a_head(atlas):
    """Noise in a head-sized box: the atlas mask still gives a 'brain' of ~1800 mL, so the
    registration's mutual information is what tells (0.01 here against >= 0.54 for heads)."""
    noise = sitk.GetImageFromArray(np.random.default_rng(0).random((48, 60, 60)).astype(np.float32) * 1000)
    noise.SetSpacing((4.0, 4.0, 4.0))
    result = preprocess(noise, PreprocessConfig(resample_1mm=False, bias_correction=False, smoothing=False), atlas)
    assert result.record["registration_mi"] < 0.1
    assert any("matched the atlas poorly" in w for w in result.record["warnings"])


def test_head_warnings_name_their_measurement():
    grid = {"size": [256, 256, 20], "spacing": [0.06, 0.06, 1.0]}
    warnings = head_warnings({"native_grid": grid, "brain_ml": 3100.0, "registration_mi": 0.6})
    assert len(warnings) == 2
    assert "spans only 15 x 15 x 20 mm" in warnings[0] and "holds 3100 mL" in warnings[1]
    healthy = {"native_grid": {"size": [256, 256, 150], "spacing": [0.9, 0.9, 1.0]}, "brain_ml": 1700.0,
               "registration_mi": 0.54}
    assert head_warnings(healthy) == []
