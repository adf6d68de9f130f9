"""Metrics, post-processing and the evaluation protocol against hand-computed cases."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from maediff_core.cache import PreparedCase
from maediff_core.cli import main
from maediff_core.evaluate import PROTOCOLS, Scored, choose_reconstruction, evaluate
from maediff_core.metrics import (
    auprc,
    bisect_threshold,
    brain_fpr_thresholds,
    dice,
    histogram_kl,
    l1_error,
    mask_agreement,
    roc_fpr_thresholds,
)
from maediff_core.modelfile import ModelCard, card_markdown, load_card, with_operating_point
from maediff_core.postprocess import PostprocessConfig, erode_slices, lesion_labels, lesion_table, smooth_scores


def test_histogram_kl_by_hand():
    mask = np.ones((1, 2, 2), bool)
    image = np.array([[[0.1, 0.1], [0.9, 0.9]]])
    assert histogram_kl(image, image, mask, bins=2) == 0.0
    # P = (2 + 1, 2 + 1) / 6, Q = (4 + 1, 0 + 1) / 6 with one pseudo-count per bin.
    flat = np.full_like(image, 0.2)
    expected = 0.5 * np.log(0.5 / (5 / 6)) + 0.5 * np.log(0.5 / (1 / 6))
    assert histogram_kl(image, flat, mask, bins=2) == pytest.approx(expected)
    outside = mask.copy()
    outside[0, 1] = False  # only the brain counts
    assert histogram_kl(image, np.where(outside, image, 0.0), outside, bins=2) == 0.0


def test_dice_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 voxels
    b[0, 1:] = True  # 3 voxels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert np.isnan(dice(np.zeros_like(a), np.zeros_like(a)))  # the reference's 0 / 0
    assert dice(np.zeros_like(a), np.zeros_like(a), both_empty=1.0) == 1.0


def test_auprc_by_hand():
    # Ranking: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = 1/2 * (1/1 + 2/3).
    score = np.array([0.9, 0.8, 0.7, 0.1])
    truth = np.array([1, 0, 1, 0])
    assert auprc(score, truth) == pytest.approx(0.5 * (1 + 2 / 3))
    assert auprc(score, np.zeros(4)) == 0.0  # what scikit-learn returns without positives
    assert np.isnan(auprc(score, np.zeros(4), no_lesion=float("nan")))


def test_l1_over_the_volume_or_inside_a_mask():
    image = np.array([1.0, 2.0, 3.0, 100.0])
    rec = np.array([1.5, 2.0, 2.0, 0.0])
    assert l1_error(image, rec) == pytest.approx((0.5 + 0 + 1 + 100) / 4)
    assert l1_error(image, rec, np.array([1, 1, 1, 0])) == pytest.approx((0.5 + 0 + 1) / 3)


def test_threshold_search_finds_the_separating_value():
    rng = np.random.default_rng(0)
    truth = np.zeros((10, 20, 20), bool)
    truth[3:7, 5:12, 5:12] = True
    score = np.where(truth, rng.uniform(0.55, 1.0, truth.shape), rng.uniform(0.0, 0.45, truth.shape))
    threshold, best = bisect_threshold(lambda t: dice(score > t, truth), score.max())
    assert 0.45 <= threshold <= 0.55 and best == 1.0


def test_threshold_search_keeps_the_latest_of_equal_dice():
    # Every quarter point ties, so each step keeps the lower half and its lower quarter replaces the
    # running best: after 10 steps the answer is max * 0.25 / 2**9, not the first point 0.25.
    assert bisect_threshold(lambda t: 0.5, 1.0) == (0.25 / 2**9, 0.5)
    # No Dice above 0 (and NaN, which loses every comparison): the reference answers its start, 0.
    assert bisect_threshold(lambda t: float("nan"), 1.0) == (0.0, 0.0)
    # An all-zero map: the reference searches [0, 1] instead of [0, 0].
    assert bisect_threshold(lambda t: 1.0 if t < 0.3 else 0.0, 0.0)[0] == 0.25 / 2**9


def test_reference_fpr_thresholds_are_roc_points():
    # roc_curve keeps only the corners of the curve (drop_intermediate): 1000 healthy voxels at 0.9 (10),
    # 0.7 (40), 0.5 (50) and 0 (900) give false-positive rates 1, 5, 10 and 100 %, and the reference
    # takes the first point whose rate EXCEEDS 1 / 5 / 10 %.
    values = np.repeat([0.9, 0.7, 0.5, 0.0], [10, 40, 50, 900]).astype(np.float32)
    assert roc_fpr_thresholds([values]) == {0.01: pytest.approx(0.7), 0.05: 0.5, 0.10: 0.0}
    # Distinct values lie on one line, so only the end points are kept: every rate lands on the minimum.
    assert set(roc_fpr_thresholds([np.linspace(0, 1, 1001)]).values()) == {0.0}


def test_brain_fpr_thresholds_flag_the_asked_fraction():
    scores = [np.linspace(0, 1, 1001)]
    masks = [np.ones(1001, bool)]
    thresholds = brain_fpr_thresholds(scores, masks, rates=(0.01, 0.10))
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
    # 7 voxels around an empty centre (its 6 faces, plus one): scikit-image's filled_area fills holes
    # with a 26-connected background, so the centre stays a hole only inside 26 voxels: 7, dropped.
    for offset in np.vstack([np.eye(3, dtype=int), -np.eye(3, dtype=int), [[1, 1, 0]]]):
        score[tuple(np.array([5, 15, 4]) + offset)] = 1.0
    labels = lesion_labels(score, 0.5, PostprocessConfig())
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert (labels == 1).sum() == 75 and (labels == 2).sum() == 8


def test_median_reflects_at_the_first_and_last_slices():
    # Constant in-plane, so the 5x5x5 median is the median of 5 values along z. With the slice
    # profile 1, 0, 0, ... the first slice sees (0, 1, 1, 0, 0) under reflection (scipy's default, the
    # reference): 0; repeating the edge voxel would give (1, 1, 1, 0, 0): 1. Mirrored for the last.
    residual = np.zeros((8, 15, 15), np.float32)
    residual[0] = residual[-1] = 1.0
    score = smooth_scores(residual, np.ones_like(residual, bool))
    assert score[0, 7, 7] == score[-1, 7, 7] == 0.0
    residual[1] = 1.0  # (1, 1, 1, 1, 0) at the first slice: 1
    assert smooth_scores(residual, np.ones_like(residual, bool))[0, 7, 7] == 1.0


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
        return Scored(name, smooth_scores(score, mask), mask, truth if lesion else None, 0.01, 0.02)

    healthy = [case("h1", False)]
    for protocol in PROTOCOLS.values():
        result = evaluate([case("v1"), case("v2")], [case("t1"), case("t2")], healthy, healthy, protocol)
        assert result["dice_mean"] > 0.85 and result["auprc_mean"] > 0.85 and result["protocol"] == protocol.name
        assert set(result["brain_fpr"]) == set(result["fpr_thresholds"]) == {"1%", "5%", "10%"}
        assert result["l1_mean"] == (0.02 if protocol.l1_in_brain else 0.01)
    with pytest.raises(ValueError, match="need a lesion segmentation"):
        evaluate([case("h", False)], [case("t")])


def test_noise_level_and_scoring_are_chosen_on_validation_dice():
    rng = np.random.default_rng(2)
    mask = np.zeros((12, 32, 32), bool)
    mask[1:11, 3:29, 3:29] = True
    cases = []
    for i in range(2):
        truth = np.zeros_like(mask)
        truth[3:9, 8 + i:20 + i, 8:20] = True
        cases.append(PreparedCase(f"v{i}", rng.uniform(0, 1, mask.shape), mask, truth, {}))
    # A stand-in reconstruction whose lesion contrast depends on the noise level (300 is best), and
    # two scorings of it, "plain" twice as noisy as "sharp" (noise the median filter does not remove).
    contrast = {100: 0.05, 300: 0.6, 500: 0.3}
    calls = []

    def scorer_at(level):
        calls.append(level)
        return lambda case: ({name: rng.uniform(0, noise, mask.shape) + contrast[level] * case.seg
                              for name, noise in (("plain", 6.0), ("sharp", 3.0))}, None)

    choice = choose_reconstruction(cases, scorer_at, [100, 300, 500])
    assert (choice.levels, choice.scoring) == (300, "sharp") and calls == [100, 300, 500]
    assert [s.name for s in choice.val["sharp"]] == ["v0", "v1"] and set(choice.val) == {"plain", "sharp"}
    dices = choice.dices
    assert dices[300, "sharp"] > dices[500, "sharp"] > dices[100, "sharp"] and dices[300, "sharp"] > 0.8
    assert all(dices[level, "sharp"] > dices[level, "plain"] for level in (300, 500))
    healthy = PreparedCase("h", cases[0].image, mask, None, {})
    with pytest.raises(ValueError, match="need a lesion segmentation: h"):
        choose_reconstruction([healthy], scorer_at, [100])


def test_a_threshold_is_saved_with_its_reconstruction(tiny_model):
    card = load_card(tiny_model)
    saved = with_operating_point(card, 0.12, (150,), 48,
                                 {"val": "tumour", "protocol": "reference", "val_dice_pooled": 0.4,
                                  "t_test_val_dice_pooled": {"150": 0.4, "500": 0.3}})
    again = ModelCard.from_dict(json.loads(json.dumps(saved.to_dict())))
    assert "t_test 150 chosen on the same validation volumes, by pooled Dice: 150: 40.0 %, 500: 30.0 % (ours" \
        in card_markdown(again, 1.0)
    assert "(pooled validation Dice 40.0 %, reference evaluation protocol)" in card_markdown(again, 1.0)
    assert again.threshold == 0.12 and again.config.diffusion.t_test == (150,) and again.config.patch.stride == 48
    assert again.training["threshold_from"]["val"] == "tumour" and "threshold_from" not in card.training
    assert card.config.diffusion.t_test == (500,) and card.config.patch.stride == 16  # the original is untouched
    with pytest.raises(ValueError, match="stride 20 does not tile"):
        with_operating_point(card, 0.12, (150,), 20, {})


def test_thresh_has_no_reconstruction_to_set(tmp_path, capsys):
    data = ["--val", str(tmp_path), "--test", str(tmp_path)]
    assert main(["evaluate", "--model", "thresh", *data, "--t-test", "100", "-o", str(tmp_path / "out")]) == 2
    assert "'thresh' has none" in capsys.readouterr().err


def test_evaluate_command_takes_the_reference_protocol_and_the_healthy_validation_fold(
        tmp_path, healthy_prepared, lesion_prepared):
    data = ["--val", str(lesion_prepared), "--test", str(lesion_prepared)]
    assert main(["evaluate", "--model", "thresh", *data, "--healthy", str(healthy_prepared), "--use-splits",
                 "-o", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["protocol"] == "reference" and 0 < result["dice_mean"] <= 1
    # healthy_prepared (4 subjects): 1 test volume, and fold 0 of the other 3 for the FPR thresholds.
    assert (result["n_val"], result["n_test"], result["n_healthy"], result["n_healthy_val"]) == (1, 2, 1, 1)
    assert set(result["fpr_thresholds"]) == set(result["brain_fpr"]) == {"1%", "5%", "10%"}
    assert "Protocol: reference" in (tmp_path / "eval" / "metrics.md").read_text()
    assert main(["evaluate", "--model", "thresh", *data, "--protocol", "ours", "-o", str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "metrics.json").read_text())["protocol"] == "ours"


def test_save_threshold_rewrites_the_card_beside_the_same_weights(tmp_path, tiny_model, lesion_prepared):
    import shutil

    from maediff_core.modelfile import load_card, load_model, model_paths, sha256_of

    weights, meta = model_paths(tiny_model)
    for path in (weights, meta):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / meta.with_suffix(".md").name).write_text("stale")  # as if published
    copy = tmp_path / meta.name
    data = ["--val", str(lesion_prepared), "--test", str(lesion_prepared), "--use-splits"]
    assert main(["evaluate", "--model", str(copy), *data, "--stride", "48", "--save-threshold",
                 "-o", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    card = load_card(copy)
    assert (card.threshold, card.config.patch.stride) == (result["threshold"], 48)
    assert card.training["threshold_from"]["protocol"] == "reference"
    # The pair stays one: the card keeps the weights' hash, and loading verifies it.
    assert json.loads(copy.read_text())["weights_sha256"] == sha256_of(tmp_path / weights.name)
    load_model(copy, "cpu")
    assert "patches, stride 48" in (tmp_path / meta.with_suffix(".md").name).read_text()


def test_mask_agreement_measures_overlap_surfaces_and_volumes():
    cube = np.zeros((40, 40, 40), np.uint8)
    cube[10:30, 10:30, 10:30] = 1
    shifted = np.roll(cube, 2, axis=2)  # 2 voxels along x
    a, b = sitk.GetImageFromArray(cube), sitk.GetImageFromArray(shifted)
    for image in (a, b):
        image.SetSpacing((0.5, 1.0, 1.0))  # 2 voxels of 0.5 mm: 1 mm
    same = mask_agreement(a, a)
    assert same == {"dice": 1.0, "mean_surface_mm": 0.0, "p95_surface_mm": 0.0, "extra_ml": 0.0, "missing_ml": 0.0}
    moved = mask_agreement(a, b)
    assert moved["dice"] == pytest.approx(0.9)
    assert moved["extra_ml"] == moved["missing_ml"] == pytest.approx(2 * 20 * 20 * 0.5 / 1000)
    assert moved["p95_surface_mm"] == pytest.approx(1.0) and 0.0 < moved["mean_surface_mm"] < 1.0
