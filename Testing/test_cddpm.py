"""cDDPM's own parts: the condition reaches the output, the scale-shift block starts where it should,
an ensemble is the mean of its members, its noise levels are chosen on validation volumes, and the
residual study runs (test_methods.py has what every method shares)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CDDPM, run
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

from maediff_core.detect import DetectConfig, reconstruct
from maediff_core.errors import CardError
from maediff_core.methods import get_config
from maediff_core.methods.base import ModelConfig
from maediff_core.methods.cddpm.conditioning import ScaleShiftResBlock
from maediff_core.modelfile import ModelCard, card_markdown, load_model
from maediff_core.torch_runtime import TorchRuntime


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every zero-initialised weight (the blocks' last convolutions, the scale halves) drawn at
    random, so that each path of the network reaches its output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    return module


def test_the_condition_changes_the_reconstruction():
    net = randomised(TINY_CDDPM.build()).eval()
    x, t = torch.randn(2, 1, 96, 96), torch.tensor([250, 750])
    clean = torch.rand(2, 1, 96, 96) * 2 - 1
    with torch.no_grad():
        same = net(x, t, clean=clean)
        torch.testing.assert_close(net(x, t, clean=clean.clone()), same)
        other = net(x, t, clean=0.3 * clean - 0.5)  # another contrast of the same slice
    assert (other - same).abs().mean() > 1e-3 * same.abs().mean()  # 4e-3 at these weights; float noise: 1e-7
    with pytest.raises(ValueError, match="needs the clean slice"):
        net(x, t)


def test_the_scale_shift_block_starts_as_an_added_shift_and_scales_once_trained():
    block = DiffusionUNetResnetBlock(2, 32, 64, 64, norm_num_groups=8)
    film = ScaleShiftResBlock(block, 96)
    torch.nn.init.normal_(film.conv2.conv.weight, std=0.05)  # MONAI zero-initialises it
    x, emb = torch.randn(3, 32, 12, 12), torch.randn(3, 96)
    projected = film.time_emb_proj(torch.nn.functional.silu(emb))[:, :, None, None]
    scale, shift = projected[:, :64], projected[:, 64:]
    assert not scale.any()  # the scale half starts at zero

    def by_hand(scale: torch.Tensor) -> torch.Tensor:
        h = film.conv1(torch.nn.functional.silu(film.norm1(x)))
        h = film.norm2(h) * (1 + scale) + shift
        return film.skip_connection(x) + film.conv2(torch.nn.functional.silu(h))

    with torch.no_grad():
        torch.testing.assert_close(film(x, emb), by_hand(0))
        film.time_emb_proj.bias[:64] = 0.5
        torch.testing.assert_close(film(x, emb), by_hand(torch.full_like(scale, 0.5)))
    # The weights keep MONAI's names, and the embedding enters only through the new projection.
    assert set(film.state_dict()) - {"time_emb_proj.weight", "time_emb_proj.bias"} == \
        set(block.state_dict()) - {"time_emb_proj.weight", "time_emb_proj.bias"}


def test_an_ensemble_is_the_mean_of_its_members():
    net = randomised(TINY_CDDPM.build()).eval()
    card = ModelCard(TINY_CDDPM)
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (3, 96, 96)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[:, 20:70, 25:75] = True
    net = TorchRuntime(net, card)
    ensemble = reconstruct(net, card, image, mask, DetectConfig(t_test=(100, 400, 700), seed=5, batch_size=2))
    members = [reconstruct(net, card, image, mask, DetectConfig(t_test=(level,), seed=5 + i))
               for i, level in enumerate((100, 400, 700))]
    np.testing.assert_allclose(ensemble, np.mean(members, 0), atol=1e-5)  # float32, other batch sizes
    assert np.abs(members[0] - members[2]).max() > 1e-3  # the levels differ: the mean is not one of them
    # The model's own ensemble is used unless told otherwise.
    np.testing.assert_array_equal(reconstruct(net, card, image, mask, DetectConfig(seed=5)),
                                  reconstruct(net, card, image, mask, DetectConfig(t_test=(250, 500, 750), seed=5)))


@pytest.fixture(scope="module")
def tiny_cddpm(tmp_path_factory, healthy_prepared):
    """Two epochs through the trainer and its checkpoints, as `maediff train --config cddpm-small` runs."""
    folder = tmp_path_factory.mktemp("cddpm")
    trainer = run(folder, "run", 2, healthy_prepared, config=TINY_CDDPM)
    assert trainer.step == 4 and trainer.train.augment is True  # the cDDPM reference augments
    return folder / "run" / "best.json"


def test_a_trained_cddpm_chooses_its_levels_detects_and_evaluates_through_the_command_line(
        tmp_path, tiny_cddpm, lesion_prepared, atlas, capsys):
    import SimpleITK as sitk

    from maediff_core.cli import main
    from maediff_core.phantom import PhantomConfig, make_phantom
    from maediff_core.volume_io import write_volume

    model, card = load_model(tiny_cddpm)
    assert card.config == TINY_CDDPM and model.condition is not None and card.training["augment"] is True
    out = tmp_path / "eval"
    evaluate = ["evaluate", "--model", str(tiny_cddpm), "--val", str(lesion_prepared), "--test", str(lesion_prepared),
                "--use-splits"]
    capsys.readouterr()
    # A threshold chosen on another contrast is not stored: refused before any volume is scored.
    assert main([*evaluate, "--t-test", "250,750", "500", "--contrast", "gamma-1.4", "--save-threshold",
                 "-o", str(out)]) == 2
    assert "--save-threshold stores the operating point of the model's own contrast" in capsys.readouterr().err
    assert not out.exists()
    assert main([*evaluate, "--t-test", "250,750", "500", "--save-threshold", "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["t_test_val_dice_pooled"]) == {"250,750", "500"} and metrics["kl_mean"] > 0
    saved = load_model(tiny_cddpm)[1]
    assert list(saved.config.diffusion.t_test) == metrics["t_test"] and saved.threshold == metrics["threshold"]
    assert main([*evaluate, "--contrast", "gamma-1.4", "--max-volumes", "1", "-o", str(tmp_path / "shifted")]) == 0
    shifted = json.loads((tmp_path / "shifted" / "metrics.json").read_text())
    assert shifted["contrast"] == "gamma-1.4" and shifted["kl_mean"] != metrics["kl_mean"]

    phantom = make_phantom("tumour", 31, PhantomConfig(skull_probability=0.0), atlas, native_grid=atlas.template,
                           pose=sitk.AffineTransform(3))
    volume = write_volume(phantom.image, tmp_path / "input.nii.gz")
    assert main(["detect", str(volume), "-o", str(tmp_path / "detect"), "--model", str(tiny_cddpm), "--no-register",
                 "--mask-method", "skull-stripped", "--t-test", "250,750"]) == 0
    summary = json.loads((tmp_path / "detect" / "input" / "lesions.json").read_text())
    assert summary["model"] == "cddpm-tiny" and summary["detect"]["t_test"] == [250, 750]
    for name in ("heatmap", "reconstruction", "lesions"):
        written = sitk.ReadImage(str(tmp_path / "detect" / "input" / f"{name}.nii.gz"))
        assert written.GetSize() == phantom.image.GetSize()


def test_residual_contrast_conditions_on_healthy_slices_and_reports_each_level(tmp_path, tiny_cddpm,
                                                                              lesion_prepared, healthy_prepared):
    script = Path(__file__).resolve().parents[1] / "scripts" / "residual_contrast.py"
    spec = importlib.util.spec_from_file_location("residual_contrast", script)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    model = randomised(TINY_CDDPM.build()).eval()
    generator = torch.Generator().manual_seed(0)
    image, healthy = (torch.rand(5, 96, 96, generator=generator).numpy() for _ in range(2))
    x, t = torch.randn(2, 1, 96, 96, generator=generator), torch.tensor([250, 500])
    own = torch.from_numpy(image[[3, 1]] * 2 - 1).unsqueeze(1)
    with torch.no_grad():  # each slice recognised, and conditioned on that slice of the healthy volume
        swapped = study.HealthyCondition(model, image, healthy)(x, t, clean=own)
        expected = model(x, t, clean=torch.from_numpy(healthy[[3, 1]] * 2 - 1).unsqueeze(1))
    torch.testing.assert_close(swapped, expected)

    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(script), "--model", str(tiny_cddpm), "--tumour", str(lesion_prepared),
                           "--healthy", str(healthy_prepared), "--levels", "250", "750", "--volumes", "1",
                           "-o", str(out), "--figure", str(tmp_path / "residuals.png")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["level"], r["condition"]) for r in rows] == [(250, "own slice"), (250, "healthy slice"),
                                                             (750, "own slice"), (750, "healthy slice")]
    for row in rows:
        assert row["ratio"] == pytest.approx(row["lesion_residual"] / row["brain_residual"])
        assert 0 < row["voxel_auprc"] <= 1
    assert all(r["healthy_l1"] > 0 for r in rows[::2]) and all(r["lesion_change"] > 0 for r in rows[1::2])
    assert "| cddpm-tiny | 750 | healthy slice |" in done.stdout
    assert (tmp_path / "residuals.png").read_bytes().startswith(b"\x89PNG")


def test_maediff_models_says_what_the_small_cddpm_keeps():
    from maediff_core.profile import count, describe

    small, full = count("cddpm-small"), count("cddpm")
    assert small["levels"] == full["levels"] == 3 and small["positions"] == 1 and small["passes"] == 3
    assert 0.2 < small["parts_m"]["encoder"] < 0.5 and 20 < full["parts_m"]["encoder"] < 30  # ResNet-50: 25 M
    assert "U-Net 32/64/64 x 2 blocks; ResNet basic 1-1-1-1, 16..128 -> 128" in describe("cddpm-small")


def test_cddpm_cards_say_what_they_are_and_older_cards_read_as_one_level():
    card = ModelCard(get_config("cddpm-small"))
    text = card_markdown(card, 10.0)
    assert "conditioned on a ResNet encoding" in text and "t_test 250,500,750 of 1000 (predictions averaged)" in text
    older = get_config("maediff-small").to_dict()
    older["diffusion"]["t_test"] = 150  # as cards stored it before ensembles
    older |= {"encoder": None, "latent": None}  # and every method's parts, before the method registry
    assert ModelConfig.from_dict(older).diffusion.t_test == (150,)
    broken = get_config("cddpm-small").to_dict()
    broken["encoder"] = None
    with pytest.raises(CardError, match="config.encoder: expected an object, got None"):
        ModelConfig.from_dict(broken)
    with pytest.raises(CardError, match="a cddpm configuration noises the whole slice"):
        ModelConfig.from_dict({**get_config("cddpm-small").to_dict(), "patch": {"whole_slice": False}})
