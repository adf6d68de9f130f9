"""Scoring from several reconstructions (residual, mean, Mahalanobis), false alarms on normal brains,
and the reading operating point: exact arithmetic, the card round trip, and the command line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from maediff_core.cli import main
from maediff_core.detect import DetectConfig, reconstruct_samples
from maediff_core.errors import OptionError
from maediff_core.evaluate import Scored
from maediff_core.modelfile import ModelCard, load_card, rewrite_card
from maediff_core.reading import case_auroc, choose_reading, false_alarms, reading_threshold
from maediff_core.runtime import load_runtime
from maediff_core.scoring import ScoringConfig, mahalanobis_distance, mahalanobis_map, score_map


def dense_distance(x: np.ndarray, samples: np.ndarray, regulariser: float) -> np.ndarray:
    """The definition, with the P x P covariance formed and solved."""
    mean = samples.mean(0)
    centred = samples - mean
    covariance = centred.T @ centred / (len(samples) - 1) + regulariser * np.eye(samples.shape[1])
    d = x - mean
    return np.sqrt(np.clip(d * np.linalg.solve(covariance, d), 0, None))


@pytest.mark.parametrize("n, pixels, regulariser", [(2, 30, 1e-2), (4, 120, 1e-2), (10, 200, 1e-3), (10, 6, 0.5)])
def test_the_woodbury_distance_equals_the_dense_formula(n, pixels, regulariser):
    rng = np.random.default_rng(n * pixels)
    samples = rng.normal(0.5, 0.1, (n, pixels))
    x = rng.normal(0.5, 0.15, pixels)
    np.testing.assert_allclose(mahalanobis_distance(x, samples, regulariser), dense_distance(x, samples, regulariser),
                               rtol=1e-5, atol=1e-5)


def test_each_scoring_compares_what_it_says():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (3, 16, 16)).astype(np.float32)
    samples = np.clip(image + rng.normal(0, 0.05, (5, 3, 16, 16)), 0, 1).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[:, 4:12, 4:12] = True
    np.testing.assert_array_equal(score_map(image, samples, mask, ScoringConfig()), np.abs(image - samples[0]))
    np.testing.assert_allclose(score_map(image, samples, mask, ScoringConfig("mean", 4)),
                               np.abs(image - samples[:4].mean(0)), atol=1e-7)
    mhd = score_map(image, samples, mask, ScoringConfig("mhd", 5))
    assert not mhd[~mask].any() and mhd.max() == pytest.approx(1.0)  # normalised per volume, brain only
    raw = mahalanobis_map(image, samples, mask, 1e-2, normalise=False)
    np.testing.assert_allclose(mhd, raw / raw.max(), rtol=1e-6)
    z = 1  # each slice on its own: the distance of slice 1's brain pixels from slice 1's samples
    np.testing.assert_allclose(raw[z][mask[z]], dense_distance(image[z][mask[z]].astype(np.float64),
                                                               samples[:, z][:, mask[z]].astype(np.float64), 1e-2),
                               rtol=1e-4)
    with pytest.raises(ValueError, match="needs 10 reconstructions, got 5"):
        score_map(image, samples, mask, ScoringConfig("mhd", 10))


def test_scorings_are_named_as_the_command_line_names_them():
    for label in ("residual", "mean:4", "mhd:10", "mhd:4:raw"):
        assert ScoringConfig.from_label(label).label == label
    assert ScoringConfig.from_label("mhd") == ScoringConfig("mhd", 10)  # Behrendt et al.'s N
    for bad, message in (("mean:1", "two or more"), ("residual:3", "one reconstruction"), ("magic", "one of"),
                         ("mean:4:raw", "mhd:N")):
        with pytest.raises(ValueError, match=message):
            ScoringConfig.from_label(bad)
    with pytest.raises(ValueError, match="regulariser"):
        ScoringConfig("mhd", 4, regulariser=0.0)


def test_the_scoring_and_the_reading_point_round_trip_through_the_card(tiny_model, tmp_path):
    for suffix in (".json", ".safetensors"):
        shutil.copy(tiny_model.with_suffix(suffix), tmp_path / f"m{suffix}")
    card = load_card(tmp_path / "m.json")
    assert card.scoring == ScoringConfig() and card.reading is None and card.operating_point == "protocol"
    reading = {"threshold": 0.2, "min_voxels": 27, "target": "at most 1"}
    rewrite_card(replace(card, scoring=ScoringConfig("mhd", 6, regulariser=0.05), reading=reading), tmp_path / "m.json")
    again = load_card(tmp_path / "m.json")
    assert again.scoring == ScoringConfig("mhd", 6, regulariser=0.05) and again.reading == reading
    assert again.operating_point == "reading"
    assert ModelCard.from_dict(json.loads(json.dumps(again.to_dict()))) == again
    broken = {**again.to_dict(), "scoring": {"name": "mhd", "samples": 1}}
    with pytest.raises(ValueError, match="scoring: scoring mhd takes two or more"):
        ModelCard.from_dict(broken)
    with pytest.raises(ValueError, match="reading: needs a threshold >= 0"):
        ModelCard.from_dict({**again.to_dict(), "reading": {"threshold": -1.0, "min_voxels": 8}})


def test_several_reconstructions_draw_their_own_noise_and_the_first_is_the_single_one(tiny_model, healthy_prepared):
    from maediff_core.cache import load_prepared

    runtime, card = load_runtime(tiny_model, "torch", "cpu")
    case = load_prepared(healthy_prepared)[0]
    image, mask = case.image[22:25], case.mask[22:25]
    config = DetectConfig(stride=48, seed=4)
    one = reconstruct_samples(runtime, card, image, mask, config)
    three = reconstruct_samples(runtime, card, image, mask, replace(config, scoring=ScoringConfig("mean", 3)))
    assert one.shape == (1, *image.shape) and three.shape == (3, *image.shape)
    np.testing.assert_allclose(three[0], one[0], atol=1e-5)
    assert np.abs(three[1] - three[0]).max() > 1e-3 and np.abs(three[2] - three[1]).max() > 1e-3


def scored(score: np.ndarray, truth: np.ndarray | None = None) -> Scored:
    return Scored("c", score, np.ones(score.shape, bool), truth)


def blobs(shape, places, value):
    score = np.zeros(shape, np.float32)
    for z, y, x, side in places:
        score[z:z + side, y:y + side, x:x + side] = value
    return score


def test_false_alarms_count_candidates_on_normal_brains_and_off_the_lesions():
    shape = (10, 20, 20)
    healthy = [scored(blobs(shape, [(0, 0, 0, 2), (5, 10, 10, 3)], 0.5)), scored(blobs(shape, [], 0.5))]
    truth = blobs(shape, [(2, 2, 2, 3)], 1).astype(bool)
    test = [scored(blobs(shape, [(2, 2, 2, 3), (6, 14, 14, 2)], 0.5), truth)]
    alarms = false_alarms(healthy, test, 0.1, 8, voxel_ml=0.008)
    assert alarms["healthy_candidates_mean"] == 1.0 and alarms["healthy_candidates_max"] == 2
    assert alarms["healthy_ml_max"] == pytest.approx((8 + 27) * 0.008)
    assert alarms["lesion_volume_false_candidates_mean"] == 1.0
    assert false_alarms(healthy, test, 0.1, 27, 0.008)["healthy_candidates_mean"] == 0.5  # the 2 x 2 x 2 dropped
    assert case_auroc(test, healthy) == 0.75  # the test volume ties the first healthy one at its top


def test_the_reading_point_is_chosen_on_validation_volumes_for_the_target():
    shape = (10, 20, 20)
    rng = np.random.default_rng(1)
    truth = blobs(shape, [(3, 5, 5, 4)], 1).astype(bool)
    val = [scored(blobs(shape, [(3, 5, 5, 4)], 0.8) + rng.uniform(0, 0.3, shape).astype(np.float32), truth)]
    healthy_val = [scored(blobs(shape, [(1, 1, 1, 2), (6, 12, 12, 3)], 0.6) + rng.uniform(0, 0.3, shape).astype(
        np.float32)) for _ in range(3)]
    # Under every score the whole volume is one candidate, which meets a target of one: the search
    # starts at the protocol's threshold (here 0.35, above the noise), never below it.
    assert reading_threshold(healthy_val, 8, 0.0, target=1.0) == 0.0
    threshold = reading_threshold(healthy_val, 8, 0.35, target=1.0)
    counts = [false_alarms([h], val, threshold, 8, 0.008)["healthy_candidates_mean"] for h in healthy_val]
    assert threshold > 0.35 and np.mean(counts) <= 1.0
    assert reading_threshold(healthy_val, 8, 0.9, target=1.0) == 0.9  # the protocol's already meets it
    chosen = choose_reading(val, healthy_val, float("nan"), 0.0, target=0.0)
    assert chosen["healthy_val_candidates_mean"] == 0.0 and chosen["val_dice_pooled"] > 0.5
    assert {o["min_voxels"] for o in chosen["options"]} == {8, 27, 64}


def test_detect_refuses_a_scoring_without_its_threshold_and_a_missing_reading_point(tiny_model, tmp_path):
    from maediff_core.detect import detect_file

    runtime, card = load_runtime(tiny_model, "torch", "cpu")
    with pytest.raises(OptionError, match=r"holds for its scoring \(residual\): pass --threshold with --scoring mhd:4"):
        detect_file(tmp_path / "absent.nii.gz", tmp_path / "out", runtime, card,
                    DetectConfig(scoring=ScoringConfig("mhd", 4)))
    with pytest.raises(OptionError, match="no reading operating point"):
        detect_file(tmp_path / "absent.nii.gz", tmp_path / "out", runtime, card,
                    DetectConfig(operating_point="reading"))


def test_evaluate_compares_scorings_on_one_draw_and_saves_the_reading_point(tiny_model, tmp_path, lesion_prepared,
                                                                            healthy_prepared, detection_run, capsys):
    for suffix in (".json", ".safetensors"):
        shutil.copy(tiny_model.with_suffix(suffix), tmp_path / f"m{suffix}")
    model = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(model), "--val", str(lesion_prepared), "--test", str(lesion_prepared),
                 "--healthy", str(healthy_prepared), "--use-splits", "--max-volumes", "1", "--stride", "48",
                 "--scoring", "residual", "mean:2", "mhd:2", "--save-threshold", "-o", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["scorings"]) == {"residual", "mean:2", "mhd:2"}
    best = max(metrics["scoring_val_dice_pooled"], key=metrics["scoring_val_dice_pooled"].get)
    assert metrics["scoring"] == best  # chosen on the validation volumes
    for result in metrics["scorings"].values():
        assert {"protocol", "reading"} <= set(result["false_alarms"]) and 0 <= result["case_auroc"] <= 1
    card = load_card(model)
    assert card.scoring.label == best and card.threshold == metrics["threshold"]
    assert card.reading["threshold"] == metrics["reading"]["threshold"]
    assert card.reading["min_voxels"] in (8, 27, 64) and "validation fold 0" in card.reading["chosen_on"]["healthy_val"]
    # The card records the test numbers, with the command and the evaluation kept beside it.
    entry = card.metrics[Path(lesion_prepared).name]
    assert (entry["n"], entry["scoring"], entry["dice"]["mean"]) == (metrics["n_test"], best, metrics["dice_mean"])
    assert entry["healthy_candidates_reading"]["mean"] == metrics["false_alarms"]["reading"]["healthy_candidates_mean"]
    assert entry["command"].startswith(f"maediff evaluate --model {model} --val {lesion_prepared}")
    assert json.loads((tmp_path / "m.evaluation.json").read_text()) == metrics
    # Detection now reads at the reading point, and says so.
    capsys.readouterr()
    volume = detection_run["folder"] / "input.nii.gz"
    assert main(["detect", str(volume), "-o", str(tmp_path / "out"), "--model", str(model), "--no-register",
                 "--mask-method", "skull-stripped"]) == 0
    summary = json.loads((tmp_path / "out" / "input" / "lesions.json").read_text())
    assert summary["operating_point"] == "reading" and summary["min_lesion_voxels"] == card.reading["min_voxels"]
    assert summary["threshold"] == card.reading["threshold"]
    assert ScoringConfig(**summary["detect"]["scoring"]) == card.scoring
