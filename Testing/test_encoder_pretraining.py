"""cDDPM's optional encoder pre-training (SparK): sparse encoding, its objective, and its stage."""

import copy
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import FAST, TINY_CDDPM
from safetensors.torch import load_file
from torch import nn

from maediff_core.cache import load_prepared, select, split_of
from maediff_core.errors import CardError
from maediff_core.methods.cddpm.pretraining import (
    MaskedPretrainer,
    PretrainConfig,
    SparseBatchNorm2d,
    Visible,
    cell_pixels,
    pretraining_loss,
    stage_features,
    visible_cells,
)
from maediff_core.modelfile import card_markdown, load_model
from maediff_core.training import Trainer, train


def brain_slices(prepared, count=4):
    case = load_prepared(prepared, select(split_of(prepared), "train", 0))[0]
    chosen = np.flatnonzero(case.mask.reshape(len(case.mask), -1).mean(1) > 0.2)[::6][:count]
    return (torch.from_numpy(case.image[chosen] * 2 - 1).unsqueeze(1),
            torch.from_numpy(case.mask[chosen].astype(np.float32)).unsqueeze(1))


def test_hidden_cells_never_reach_the_encoding():
    pretrainer = MaskedPretrainer(TINY_CDDPM.encoder).train()
    cells = visible_cells(2, 96, 96, 0.65, torch.Generator().manual_seed(0))
    image = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    shown = nn.functional.interpolate(cells.float(), size=(96, 96)).bool()
    other = torch.where(shown, image, torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(2)))
    encodings = []
    for x in (image, other):
        pretrainer.visible.cells = cells
        with torch.no_grad():
            encodings.append(stage_features(pretrainer.resnet, x * pretrainer.visible.at(x)))
        pretrainer.visible.cells = None
    for a, b in zip(*encodings, strict=True):
        torch.testing.assert_close(a, b)  # the images differ only in hidden cells
        hidden = 1 - nn.functional.interpolate(cells.float(), size=a.shape[-2:])
        assert float((a * hidden).abs().max()) == 0.0 and float(a.abs().max()) > 0


def test_sparse_batch_norm_takes_its_statistics_from_visible_positions_only():
    visible = Visible()
    norm = SparseBatchNorm2d(nn.BatchNorm2d(3), visible)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    visible.cells = torch.tensor([[[[True, False], [False, True]]], [[[False, False], [True, False]]]])
    out = norm(x)
    keep = visible.at(x)[:, 0].bool()
    values = x.permute(0, 2, 3, 1)[keep]
    expected = (values - values.mean(0)) / torch.sqrt(values.var(0, unbiased=False) + norm.eps)
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[keep], expected)
    assert float(out.detach().permute(0, 2, 3, 1)[~keep].abs().max()) == 0.0
    torch.testing.assert_close(norm.running_mean, 0.1 * values.mean(0))
    visible.cells = None  # outside pre-training, a plain batch norm
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm.eval()(x), plain.eval()(x))


def test_the_mask_keeps_its_ratio_of_cells_per_slice():
    cells = visible_cells(512, 96, 128, 0.65, torch.Generator().manual_seed(0))
    assert cells.shape == (512, 1, 3, 4)
    assert (cells.flatten(1).sum(1) == round(12 * 0.35)).all()
    frequency = cells.float().mean(0)  # each cell equally likely: 4 / 12
    assert 0.25 < float(frequency.min()) and float(frequency.max()) < 0.42
    with pytest.raises(ValueError, match="multiples of 32"):
        visible_cells(1, 100, 96, 0.65, torch.Generator())


class Constant(nn.Module):
    """A prediction that ignores its input: the objective on its own."""

    def __init__(self, shape):
        super().__init__()
        self.prediction = nn.Parameter(torch.zeros(shape))

    def forward(self, image01, cells):
        return self.prediction


def test_the_loss_counts_hidden_cells_with_brain_and_their_normalised_pixels():
    x0 = torch.rand(3, 1, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    brain = torch.zeros(3, 1, 96, 96)
    brain[:, :, 5:60, 10:50] = 1  # in the top-left 2 x 2 of the 3 x 3 cells
    model = Constant(x0.shape)
    loss = pretraining_loss(model, x0, brain, torch.Generator().manual_seed(5))
    # A zero prediction of a zero-mean, unit-variance (unbiased) target: (n - 1) / n per cell.
    assert abs(loss.item() - 1023 / 1024) < 1e-4
    loss.backward()
    cells = visible_cells(3, 96, 96, PretrainConfig().mask_ratio, torch.Generator().manual_seed(5))
    has_brain = (cell_pixels(brain) > 0).any(-1)
    touched = (cell_pixels(model.prediction.grad) != 0).any(-1)
    assert torch.equal(touched, ~cells[:, 0] & has_brain) and not has_brain.all()


def test_an_ema_copy_masks_by_its_own_cells_and_the_resnet_loads_into_the_condition_encoder(healthy_prepared):
    torch.manual_seed(0)
    pretrainer = MaskedPretrainer(TINY_CDDPM.encoder)
    x0, _ = brain_slices(healthy_prepared)
    twin = copy.deepcopy(pretrainer)  # an EMA's copy masks by its own cells
    assert twin.visible is not pretrainer.visible
    with torch.no_grad():
        cells = visible_cells(len(x0), 96, 96, 0.65, torch.Generator().manual_seed(3))
        torch.testing.assert_close(twin.eval()(x0, cells), pretrainer.eval()(x0, cells))
    condition = TINY_CDDPM.build().condition.resnet
    condition.load_state_dict(pretrainer.resnet.state_dict())  # the same names and shapes


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, healthy_prepared):
    """`maediff train --config cddpm-tiny --pretrain`: the encoder stage, then the whole network."""
    folder = tmp_path_factory.mktemp("pretrained") / "run"
    result = train(TINY_CDDPM, healthy_prepared, folder, replace(FAST, epochs=2, pretrain=True))
    return folder, result


def test_pretraining_runs_as_a_first_stage_and_the_card_records_it(pretrained_run, healthy_prepared):
    folder, result = pretrained_run
    assert result["seconds_all_stages"] > result["seconds"]
    for stage in (folder / "encoder", folder):
        assert len((stage / "metrics.csv").read_text().strip().splitlines()) == 3
    model, card = load_model(folder / "best.json")
    encoder = card.training["encoder"]
    assert card.training["pretrain"] is True and encoder["epoch"] == 2 and encoder["sha256"]
    assert card.extra_weights == {} and "stage" not in card.training
    assert "the encoder's masked pre-training (SparK" in card_markdown(card, 1.0)

    # The whole network's stage starts from the pre-trained encoder's weights (a Trainer before it resumes).
    pretrained = load_file(str(folder / "encoder" / "best.safetensors"))
    trainer = Trainer(TINY_CDDPM, replace(FAST, pretrain=True), healthy_prepared, folder)
    for key, value in trainer.network.condition.resnet.state_dict().items():
        torch.testing.assert_close(value, pretrained[f"resnet.{key}"])


def test_a_resumed_run_refuses_another_encoder_or_another_pretraining(pretrained_run, tmp_path, healthy_prepared):
    folder, _ = pretrained_run
    copy_ = tmp_path / "run"
    shutil.copytree(folder, copy_)
    with pytest.raises(CardError, match=r"pretrain True \(asked False\)"):
        train(TINY_CDDPM, healthy_prepared, copy_, replace(FAST, epochs=3))
    # The encoder stage again, alone and with another seed (its first epoch always writes best):
    train(TINY_CDDPM, healthy_prepared, copy_, replace(FAST, epochs=1, seed=7), restart=True, stage="encoder")
    assert json.loads((copy_ / "encoder" / "best.json").read_text())["training"]["pretrain"] is True
    with pytest.raises(CardError, match="another encoder"):
        Trainer(TINY_CDDPM, replace(FAST, epochs=3, pretrain=True), healthy_prepared, copy_).resume()
