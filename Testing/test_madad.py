"""MAD-AD in the engine: its masks, its DDIM step, its autoencoder and denoiser stages, its card with
two weight files, and its detection."""

import json
import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import FAST, TINY_MADAD

from maediff_core.cache import load_prepared, select, split_of
from maediff_core.detect import DetectConfig, anomaly_score, reconstruct
from maediff_core.diffusion import Diffusion
from maediff_core.errors import CardError
from maediff_core.methods.madad.config import LatentConfig
from maediff_core.methods.madad.networks import Autoencoder
from maediff_core.methods.madad.repair import (
    autoencoder_loss,
    brain_cells,
    corrupted_cells,
    ddim_step,
    patch_shape,
    repair_latents,
)
from maediff_core.modelfile import ModelCard, card_markdown, load_model, publish_model
from maediff_core.torch_runtime import TorchRuntime
from maediff_core.training import train

EPOCHS = 20


@pytest.fixture(scope="module")
def tiny_madad(tmp_path_factory, healthy_prepared):
    """Both stages of the tiny MAD-AD through `train`, as `maediff train --config` runs them."""
    folder = tmp_path_factory.mktemp("madad") / "run"
    result = train(TINY_MADAD, healthy_prepared, folder, replace(FAST, epochs=EPOCHS, lr=2e-3))
    return folder, result


def test_patch_shapes_follow_the_stated_distribution():
    config = LatentConfig()
    generator = torch.Generator().manual_seed(0)
    draws = Counter(side for _ in range(4000) for side in patch_shape(config, generator))
    for size, p in zip(config.sizes, config.probabilities, strict=True):
        assert abs(draws[size] / 8000 - p) < 0.02, draws


def test_masks_cover_whole_patches_at_the_stated_ratio_and_never_non_brain():
    generator = torch.Generator().manual_seed(0)
    ones = torch.ones(2000, 1, 24, 24, dtype=torch.bool)
    single = LatentConfig(sizes=(1,), probabilities=(1.0,))
    ratios = corrupted_cells(ones, single, generator).float().mean((1, 2, 3))
    # Whole cells: a ratio may pass 0.4 by one cell of the 576.
    assert ratios.max() <= 0.4 + 1 / 576 and ratios.min() < 0.01 and abs(ratios.mean() - 0.2) < 0.01
    assert abs(np.histogram(ratios, bins=4, range=(0, 0.4))[0] / 2000 - 0.25).max() < 0.04  # uniform

    blocks = corrupted_cells(ones[:50], LatentConfig(sizes=(4,), probabilities=(1.0,)), generator)
    tiles = blocks.float().unfold(2, 4, 4).unfold(3, 4, 4)  # (B, 1, 6, 6, 4, 4): each tile all or nothing
    assert (tiles.amin((-1, -2)) == tiles.amax((-1, -2))).all() and blocks.any()

    brain = torch.zeros_like(ones[:200])
    brain[:, :, 4:20, 6:18] = True
    cells = corrupted_cells(brain, replace(single, max_ratio=1.0), generator)
    assert not (cells & ~brain).any() and cells.any()


def test_a_ddim_step_with_the_true_x0_returns_the_latent():
    alpha_bar = Diffusion(TINY_MADAD.diffusion).alpha_bar
    generator = torch.Generator().manual_seed(0)
    z0, eps, other = (torch.randn(2, 4, 24, 24, generator=generator, dtype=torch.float64) for _ in range(3))
    diffusion = Diffusion(TINY_MADAD.diffusion)
    for t in (10, 6, 2):
        zt = diffusion.q_sample(z0, torch.tensor([t, t]), eps)
        previous = ddim_step(zt, z0, t, alpha_bar, eta=0.0, noise=other)  # deterministic DDIM
        torch.testing.assert_close(previous, diffusion.q_sample(z0, torch.tensor([t - 1] * 2), eps))
    z1 = diffusion.q_sample(z0, torch.tensor([1, 1]), eps)
    torch.testing.assert_close(ddim_step(z1, z0, 1, alpha_bar, eta=0.5, noise=other), z0)  # the last step lands


def test_the_repair_moves_only_the_cells_found_corrupted():
    net = TINY_MADAD.build().eval()
    conv = net.denoiser.unet.out[-1].conv  # MONAI zero-initialises it: keep logits 0, nothing moves
    z = torch.randn(2, 4, 24, 24)
    alpha_bar = Diffusion(TINY_MADAD.diffusion).alpha_bar
    noise = torch.randn(10, *z.shape)
    with torch.no_grad():
        torch.testing.assert_close(repair_latents(net.denoiser, z, 10, alpha_bar, 0.5, noise), z, rtol=0, atol=0)
        conv.bias[-1] = -1.0  # every cell found corrupted
        moved = repair_latents(net.denoiser, z, 10, alpha_bar, 0.5, noise)
    assert (moved != z).all()


def test_the_autoencoder_round_trips_a_healthy_slice(healthy_prepared):
    """Its capacity and objective: 100 steps on four slices bring their round trip within 6 % of the
    intensity range (L1 0.12 on the model's [-1, 1]; 0.5 at the start, about 0.085 after them)."""
    config = TINY_MADAD.latent.autoencoder
    autoencoder = Autoencoder(config)
    case = load_prepared(healthy_prepared, select(split_of(healthy_prepared), "train", 0))[0]
    chosen = np.flatnonzero(case.mask.reshape(len(case.mask), -1).mean(1) > 0.2)[::6][:4]
    x0 = torch.from_numpy(case.image[chosen] * 2 - 1).unsqueeze(1)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=1e-3)
    for step in range(100):
        loss = autoencoder_loss(autoencoder.train(), x0, None, torch.Generator().manual_seed(step), config=config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error = float(autoencoder_loss(autoencoder.eval(), x0, None, None, config=config))
    assert error < 0.12, error


def test_both_stages_train_and_the_card_names_both_weight_files(tiny_madad, tmp_path):
    folder, result = tiny_madad
    assert result["epochs"] == EPOCHS and result["seconds_all_stages"] > result["seconds"]
    for stage in (folder / "autoencoder", folder):
        rows = (stage / "metrics.csv").read_text().strip().splitlines()
        assert len(rows) == EPOCHS + 1
        assert (stage / "best.safetensors").is_file() and (stage / "last.safetensors").is_file()
    model, card = load_model(folder / "best.json")
    assert card.extra_weights["autoencoder"]["weights"] == "autoencoder/best.safetensors"
    assert card.training["stage"] == "denoiser"
    assert card.training["autoencoder"]["epoch"] == EPOCHS and model.denoiser.scale != 1
    assert "the autoencoder stage: 20 epochs, 40 steps" in card_markdown(card, 1.0)
    assert ModelCard.from_dict(json.loads((folder / "best.json").read_text())).to_dict()["autoencoder"] == \
        card.extra_weights["autoencoder"]
    assert "decode(repaired latent)" in card_markdown(card, 1.0)

    # Published: the autoencoder travels beside the weights, and the card names it there.
    paths = publish_model(folder / "best.json", tmp_path / "pub" / "madad", "tiny", half=True)
    assert [p.name for p in paths] == ["madad.safetensors", "madad.autoencoder.safetensors", "madad.json", "madad.md"]
    published, published_card = load_model(tmp_path / "pub" / "madad.json")
    assert published_card.extra_weights["autoencoder"]["weights"] == "madad.autoencoder.safetensors"
    torch.testing.assert_close(published.autoencoder.state_dict(), model.autoencoder.state_dict(), atol=2e-3, rtol=2e-3)

    # Another autoencoder under the card, or none, or one outside the folder: refused before use.
    other = (folder / "autoencoder" / "last.safetensors").read_bytes()
    (tmp_path / "pub" / "madad.autoencoder.safetensors").write_bytes(other)
    with pytest.raises(CardError, match="does not match the model card"):
        load_model(tmp_path / "pub" / "madad.json")
    record = json.loads((folder / "best.json").read_text())
    with pytest.raises(CardError, match="names its autoencoder"):
        ModelCard.from_dict({**record, "autoencoder": None})
    with pytest.raises(CardError, match="autoencoder stage"):
        ModelCard.from_dict(json.loads((folder / "autoencoder" / "best.json").read_text()))
    with pytest.raises(CardError, match="inside the model's folder"):
        ModelCard.from_dict({**record, "autoencoder": {**record["autoencoder"], "weights": "../x.safetensors"}})


def test_a_resumed_denoiser_refuses_a_retrained_autoencoder(tiny_madad, tmp_path, healthy_prepared):
    folder, _ = tiny_madad
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    train(TINY_MADAD, healthy_prepared, copy, replace(FAST, epochs=EPOCHS, lr=2e-3))  # done: trains no further
    assert len((copy / "metrics.csv").read_text().strip().splitlines()) == EPOCHS + 1
    # A new autoencoder stage (its first epoch always writes best):
    train(TINY_MADAD, healthy_prepared, copy, replace(FAST, epochs=1, lr=2e-3), restart=True, stage="autoencoder")
    with pytest.raises(CardError, match="another autoencoder"):
        train(TINY_MADAD, healthy_prepared, copy, replace(FAST, epochs=EPOCHS + 1, lr=2e-3), stage="denoiser")


def test_detection_scores_the_repair_and_leaves_healthy_latents_nearly_unchanged(tiny_madad, healthy_prepared):
    folder, _ = tiny_madad
    model, card = load_model(folder / "best.json")
    case = load_prepared(healthy_prepared, select(split_of(healthy_prepared), "val", 0))[0]
    image, mask = case.image, case.mask
    rec = reconstruct(TorchRuntime(model, card), card, image, mask, DetectConfig(batch_size=16))
    assert rec.shape == image.shape and np.isfinite(rec).all()
    score = anomaly_score(image, rec, mask)
    assert np.isfinite(score).all() and score.max() > 0

    # A healthy volume: the repair moves few latent cells, and the decoded change in the brain is small.
    assert float(np.abs(image - rec)[mask].mean()) < 0.01
    chosen = np.flatnonzero(mask.reshape(len(mask), -1).mean(1) > 0.2)
    x = torch.from_numpy(image[chosen] * 2 - 1).unsqueeze(1)
    brain = brain_cells(torch.from_numpy(mask[chosen]).unsqueeze(1), 4, 0.9)
    noise = torch.randn(10, len(x), 4, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model.encode(x)
        moved = (repair_latents(model.denoiser, z, 10, Diffusion(card.config.diffusion).alpha_bar, 0.5, noise) != z)
    assert float((moved.any(1, keepdim=True) & brain).sum() / brain.sum()) < 0.1


def test_a_budget_covers_both_stages(tmp_path, healthy_prepared):
    result = train(TINY_MADAD, healthy_prepared, tmp_path, replace(FAST, epochs=50, max_minutes=0.001))
    # Each stage stops at its first epoch end past its share of the budget.
    assert result["epochs"] == 1 and len((tmp_path / "autoencoder" / "metrics.csv").read_text().splitlines()) == 2
