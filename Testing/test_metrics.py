"""Metrics, post-processing and the evaluation protocol against hand-computed cases."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from maediff_core.cli import main
from maediff_core.datasets import PreparedCase
from maediff_core.evaluate import Scored, choose_t_test, evaluate
from maediff_core.models import ModelCard, card_markdown, load_card, with_operating_point
from maediff_core.metrics import auprc, dice, fpr_thresholds, l1_error, search_threshold
from maediff_core.postprocess import PostprocessConfig, erode_slices, lesion_labels, lesion_table, smooth_scores


def test_dice_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 voxels
    b[0, 1:] = True  # 3 voxels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_auprc_by_hand():
    # Ranking: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = 1/2 * (1/1 + 2/3).
    score = np.array([0.9, 0.8, 0.7, 0.1])
    truth = np.array([1, 0, 1, 0])
    assert auprc(score, truth) == pytest.approx(0.5 * (1 + 2 / 3))
    assert np.isnan(auprc(score, np.zeros(4)))


def test_l1_inside_mask_only():
    image = np.array([1.0, 2.0, 3.0, 100.0])
    rec = np.array([1.5, 2.0, 2.0, 0.0])
    mask = np.array([1, 1, 1, 0])
    assert l1_error(image, rec, mask) == pytest.approx((0.5 + 0 + 1) / 3)


def test_threshold_search_finds_the_separating_value():
    rng = np.random.default_rng(0)
    truth = np.zeros((10, 20, 20), bool)
    truth[3:7, 5:12, 5:12] = True
    score = np.where(truth, rng.uniform(0.55, 1.0, truth.shape), rng.uniform(0.0, 0.45, truth.shape))
    threshold, best = search_threshold([score], [truth])
    assert 0.45 <= threshold <= 0.55 and best == 1.0


def test_fpr_thresholds_flag_the_asked_fraction():
    scores = [np.linspace(0, 1, 1001)]
    masks = [np.ones(1001, bool)]
    thresholds = fpr_thresholds(scores, masks, rates=(0.01, 0.10))
    assert thresholds[0.01] == pytest.approx(0.99) and thresholds[0.10] == pytest.approx(0.90)


def test_erosion_is_per_slice():
    mask = np.zeros((3, 11, 11), bool)
    mask[:, 2:9, 2:9] = True
    eroded = erode_slices(mask, 3)
    assert eroded[0].sum() == eroded[1].sum() == 1  # 7x7 square eroded 3 times: its centre
    assert eroded[0, 5, 5] and eroded[2, 5, 5]  # top and bottom slices are not eaten by 3-D erosion


def test_small_components_dropped_and_labels_ordered_by_size():
    score = np.zeros((10, 20, 20), np.float32)
    score[1:3, 1:3, 1:3] = 1.0  # 8 voxels: kept (more than 7)
    score[5, 5, 5:12] = 1.0  # 7 voxels: dropped
    score[6:9, 10:15, 10:15] = 1.0  # 75 voxels
    labels = lesion_labels(score, 0.5, PostprocessConfig())
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert (labels == 1).sum() == 75 and (labels == 2).sum() == 8


def test_smooth_scores_masks_then_filters():
    residual = np.ones((10, 20, 20), np.float32)
    mask = np.zeros_like(residual, bool)
    mask[:, 4:16, 4:16] = True
    score = smooth_scores(residual, mask)
    assert score[:, :7, :].max() == 0.0  # eroded border removed
    assert score[5, 10, 10] == 1.0


def test_lesion_table_volume_and_ras_centroid():
    labels = np.zeros((10, 20, 20), np.int32)
    labels[2:4, 5:7, 8:10] = 1  # 8 voxels
    score = labels * 0.5
    images = [sitk.GetImageFromArray(array) for array in (labels, score)]
    for image in images:
        image.SetSpacing((2.0, 2.0, 2.0))
        image.SetOrigin((10.0, 20.0, 30.0))
    row = lesion_table(*images)[0]
    assert row["voxels"] == 8 and row["volume_ml"] == pytest.approx(8 * 8 / 1000)
    assert row["max_score"] == pytest.approx(0.5) and row["mean_score"] == pytest.approx(0.5)
    # LPS centre (10 + 2*8.5, 20 + 2*5.5, 30 + 2*2.5) -> RAS flips x and y.
    assert row["centroid_ras_mm"] == [-27.0, -31.0, 35.0]


def test_protocol_end_to_end_on_synthetic_scores():
    rng = np.random.default_rng(1)

    def case(name, lesion=True):
        truth = np.zeros((20, 40, 40), bool)
        if lesion:
            truth[5:15, 10:26, 10:26] = True  # large enough for the median filter to keep
        mask = np.zeros_like(truth)
        mask[2:18, 4:36, 4:36] = True
        score = (rng.uniform(0, 0.3, truth.shape) + 0.6 * truth) * mask
        return Scored(name, smooth_scores(score, mask), mask, truth if lesion else None, 0.01)

    result = evaluate([case("v1"), case("v2")], [case("t1"), case("t2")], [case("h1", False)])
    assert result["dice_mean"] > 0.85 and result["auprc_mean"] > 0.85
    assert set(result["healthy_fpr"]) == {"1%", "5%", "10%"}
    with pytest.raises(ValueError, match="need a lesion segmentation"):
        evaluate([case("h", False)], [case("t")])


def test_noise_level_is_chosen_on_validation_dice():
    rng = np.random.default_rng(2)
    mask = np.zeros((12, 32, 32), bool)
    mask[1:11, 3:29, 3:29] = True
    cases = []
    for i in range(2):
        truth = np.zeros_like(mask)
        truth[3:9, 8 + i:20 + i, 8:20] = True
        cases.append(PreparedCase(f"v{i}", rng.uniform(0, 1, mask.shape), mask, truth, {}))
    # A stand-in reconstruction whose lesion contrast depends on the noise level: 300 is best.
    contrast = {100: 0.05, 300: 0.6, 500: 0.3}
    calls = []

    def scorer_at(level):
        calls.append(level)
        return lambda case: (rng.uniform(0, 0.3, mask.shape) + contrast[level] * case.seg, None)

    level, scored, dices = choose_t_test(cases, scorer_at, [100, 300, 500])
    assert level == 300 and calls == [100, 300, 500] and [s.name for s in scored] == ["v0", "v1"]
    assert dices[300] > dices[500] > dices[100] and dices[300] > 0.8
    healthy = PreparedCase("h", cases[0].image, mask, None, {})
    with pytest.raises(ValueError, match="need a lesion segmentation: h"):
        choose_t_test([healthy], scorer_at, [100])


def test_a_threshold_is_saved_with_its_reconstruction(tiny_model):
    card = load_card(tiny_model)
    saved = with_operating_point(card, 0.12, 150, 48, {"val": "tumour", "val_dice_pooled": 0.4,
                                                       "t_test_val_dice_pooled": {"150": 0.4, "500": 0.3}})
    again = ModelCard.from_dict(json.loads(json.dumps(saved.to_dict())))
    assert "t_test 150 chosen on the same validation volumes, by pooled Dice: 150: 40.0 %, 500: 30.0 %" \
        in card_markdown(again, 1.0)
    assert again.threshold == 0.12 and again.config.diffusion.t_test == 150 and again.config.patch.stride == 48
    assert again.training["threshold_from"]["val"] == "tumour" and "threshold_from" not in card.training
    assert card.config.diffusion.t_test == 500 and card.config.patch.stride == 16  # the original is untouched
    with pytest.raises(ValueError, match="stride 20 does not tile"):
        with_operating_point(card, 0.12, 150, 20, {})


def test_thresh_has_no_reconstruction_to_set(tmp_path, capsys):
    data = ["--val", str(tmp_path), "--test", str(tmp_path)]
    assert main(["evaluate", "--model", "thresh", *data, "--t-test", "100", "-o", str(tmp_path / "out")]) == 2
    assert "'thresh' has none" in capsys.readouterr().err
