"""Detection end to end: batched patch-wise reconstruction, outputs on the input grid, progress lines."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from maediff_core import cli
from maediff_core.cache import load_prepared
from maediff_core.detect import DetectConfig, reconstruct
from maediff_core.errors import CardError, OptionError
from maediff_core.modelfile import load_model, save_model
from maediff_core.runtime import load_runtime
from maediff_core.torch_runtime import TorchRuntime
from maediff_core.writeback import native_lesions


def test_reconstruction_covers_brain_patches_only(tiny_model, healthy_prepared):
    model, card = load_model(tiny_model)
    case = load_prepared(healthy_prepared)[0]
    calls = []
    model.register_forward_hook(lambda m, inputs, out: calls.append(len(inputs[0])))
    mask = case.mask.copy()
    mask[:40] = False  # only the top 10 slices have brain,
    mask[:, :, 48:] = False  # and only on one side
    rec = reconstruct(TorchRuntime(model, card), card, case.image, mask, DetectConfig(batch_size=64))
    assert rec.shape == case.image.shape and rec.min() >= 0 and rec.max() <= 1
    positions = card.config.patch.positions()
    expected = sum(mask[z, y:y + 48, x:x + 48].any() for z in range(50) for y, x in positions)
    assert sum(calls) == expected <= 10 * 12  # patches starting at x = 48 hold no brain: skipped
    for z in range(40):  # no brain, no patch: the slice is its own reconstruction
        np.testing.assert_allclose(rec[z], case.image[z], atol=1e-6)
    again = reconstruct(TorchRuntime(model, card), card, case.image, mask, DetectConfig(batch_size=7))
    np.testing.assert_allclose(again, rec, atol=1e-5)  # batching does not change the result


def test_stride_changes_the_number_of_evaluations(tiny_model, healthy_prepared):
    model, card = load_model(tiny_model)
    case = load_prepared(healthy_prepared)[0]
    calls = []
    model.register_forward_hook(lambda m, inputs, out: calls.append(len(inputs[0])))
    reconstruct(TorchRuntime(model, card), card, case.image, case.mask, DetectConfig(stride=48))
    assert sum(calls) <= 50 * 4


def test_detect_writes_results_on_the_input_grid(detection_run):
    """`maediff detect --progress json` run as a subprocess (the shared run of the Slicer tests)."""
    stages = {stage for stage, _ in detection_run["events"]}
    assert {"load", "preprocess", "reconstruct", "postprocess", "write", "done"} <= stages
    assert all(0.0 <= fraction <= 1.0 for _, fraction in detection_run["events"])
    assert detection_run["input_unchanged"]  # the input is never modified
    phantom, case = detection_run["phantom"], detection_run["result_dir"]
    for name in ("heatmap", "reconstruction", "lesions"):
        image = sitk.ReadImage(str(case / f"{name}.nii.gz"))
        assert image.GetSize() == phantom.image.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), phantom.image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), phantom.image.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(image.GetSpacing(), phantom.image.GetSpacing(), atol=1e-6)
    for name in ("image", "mask", "reconstruction", "heatmap", "lesions"):
        assert sitk.ReadImage(str(case / "model_space" / f"{name}.nii.gz")).GetSize() == (96, 96, 50)
    summary = json.loads((case / "lesions.json").read_text())
    assert summary["threshold"] == 0.05 and summary["model"] == "maediff-tiny"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz")))
    assert summary["lesion_count"] == len(summary["lesions"]) == labels.max()
    sizes = [lesion["voxels"] for lesion in summary["lesions"]]
    assert sizes == sorted(sizes, reverse=True)  # label 1 is the largest
    for row in summary["lesions"]:
        assert set(row) >= {"label", "voxels", "volume_ml", "max_score", "mean_score", "centroid_ras_mm"}
        assert (labels == row["label"]).sum() == row["voxels"]
    record = json.loads((case / "model_space" / "record.json").read_text())
    # Per input, not the model's training settings (the tiny model's data were registered).
    assert not record["config"]["register"] and record["config"]["mask_method"] == "skull-stripped"
    assert summary["detect"]["stride"] == 48


def test_native_lesions_follow_the_threshold(detection_run):
    # A real preprocessing record: the model's 2 mm box on the input's 1 mm grid.
    record = json.loads((detection_run["result_dir"] / "model_space" / "record.json").read_text())
    score = np.zeros((50, 96, 96), np.float32)
    score[20:26, 30:40, 30:40] = 0.5  # a big lesion
    score[30:32, 60:63, 60:63] = 0.2  # a small, fainter one
    labels, table = native_lesions(score, 0.1, record)
    assert len(table) == 2 and table[0]["voxels"] > table[1]["voxels"]
    labels, table = native_lesions(score, 0.3, record)
    assert len(table) == 1 and table[0]["max_score"] == pytest.approx(0.5, abs=1e-4)


def test_detect_errors(tmp_path, tiny_model, capsys):
    assert cli.main(["detect", str(tmp_path / "none.nii.gz"), "-o", str(tmp_path), "--model", str(tiny_model)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["detect", str(tmp_path / "x.nii.gz"), "-o", str(tmp_path), "--model",
                     str(tmp_path / "absent.json")]) == 2
    assert "model card not found" in capsys.readouterr().err
    model, card = load_model(tiny_model)
    card.threshold = None
    save_model(model, card, tmp_path / "unthresholded")
    from maediff_core.detect import detect_file

    with pytest.raises(Exception, match="no decision threshold"):
        detect_file(tmp_path / "x.nii.gz", tmp_path, TorchRuntime(model, card), card)


def test_demo_runs_the_whole_job_and_scores_it(tmp_path, tiny_model, capsys):
    from maediff_core.demo import run_demo
    from maediff_core.resources import sample_paths

    summary = run_demo(tmp_path, tiny_model, "cpu", DetectConfig(stride=48))  # 4 patch positions: quick
    case = tmp_path / "MAEDiffT2Sample"
    for name in ("heatmap.nii.gz", "reconstruction.nii.gz", "lesions.nii.gz", "lesions.json"):
        assert (case / name).is_file()
    sample = sitk.ReadImage(str(sample_paths()[0]))
    assert sitk.ReadImage(str(case / "heatmap.nii.gz")).GetSize() == sample.GetSize()
    assert summary["truth_ml"] > 0 and 0.0 <= summary["dice"] <= 1.0
    assert {"sample", "preprocess", "reconstruct", "write", "figure"} <= set(summary["timings_s"])
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "Dice against the known lesion" in printed and "reconstruct:" in printed


@pytest.mark.parametrize("option, value, message", [
    ("stride", -16, "stride must be a positive integer, got -16"),
    ("t_test", (0,), r"t-test must be one or more levels in 1\.\.1000, got 0"),
    ("batch_size", -1, "batch-size must be a positive integer, got -1"),
    ("t_test", (250, 5000), r"t-test must be one or more levels in 1\.\.1000, got 250,5000"),
    ("t_test", (250, 250), "t-test levels must differ, got 250,250"),
    ("stride", 20, "stride 20 does not tile"),
    ("stride", 24, "stride 24: a MAEDiff model's patches lie on its 16-pixel grid"),
    ("threshold", float("nan"), "--threshold must be a finite number >= 0, got nan"),
    ("threshold", -1.0, "--threshold must be a finite number >= 0, got -1.0"),
])
def test_bad_detection_options_are_refused_before_the_input_is_read(tmp_path, tiny_model, option, value, message):
    from maediff_core.detect import detect_file

    runtime, card = load_runtime(tiny_model, "torch", "cpu")
    with pytest.raises(OptionError, match=message):  # the input does not exist: it was never opened
        detect_file(tmp_path / "absent.nii.gz", tmp_path / "out", runtime, card, DetectConfig(**{option: value}))
    card.threshold = float("nan")
    with pytest.raises(CardError, match="the model card's threshold must be a finite number >= 0, got nan"):
        detect_file(tmp_path / "absent.nii.gz", tmp_path / "out", runtime, card)
    assert not (tmp_path / "out").exists()


def test_a_model_with_nan_weights_is_an_error_not_a_clean_scan(tiny_model):
    import torch

    model, card = load_model(tiny_model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    image = np.full((2, 96, 96), 0.5, np.float32)
    with pytest.raises(CardError, match="reconstruction has NaN or infinite voxels"):
        reconstruct(TorchRuntime(model, card), card, image, image > 0, DetectConfig(stride=48))


def test_an_unexpected_error_is_one_line_and_a_log(monkeypatch, capsys):
    def defect(args):
        raise KeyError("a defect")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["device"].set_defaults(func=defect)
    assert cli.main(["device"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected error: KeyError: 'a defect' (traceback in " in err
    log = err.split("(traceback in ")[1].rstrip(")\n")
    assert "Traceback" in open(log).read() and "a defect" in open(log).read()


def test_bench_detect_times_each_variant_as_a_process_and_compares_its_outputs(tmp_path, detection_run, tiny_model):
    from maediff_core.profile import detect_benchmark, detect_table
    from maediff_core.volume_io import write_volume

    truth = write_volume(detection_run["phantom"].seg, tmp_path / "truth.nii.gz")
    common = ["--model", str(tiny_model), "--no-register", "--mask-method", "skull-stripped", "--device", "cpu"]
    variants = {"a": [*common, "--stride", "48"], "again": [*common, "--stride", "48"]}
    rows = detect_benchmark(detection_run["folder"] / "input.nii.gz", variants, tmp_path, truth)
    a, again = rows
    assert a["ratio"] == 1.0 and again["ratio"] > 0
    assert again["heatmap_max_diff"] == 0.0  # detection is deterministic: a repeat differs only in time
    assert {"preprocess", "reconstruct"} <= set(a["stages_s"]) and a["wall_s"] > sum(a["stages_s"].values())
    assert 200 < a["peak_mb"] < 4000  # torch alone holds a few hundred MB
    assert all(0.0 <= row["dice"] <= 1.0 for row in rows) and a["dice"] == again["dice"]
    table = detect_table(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| a | --model") and "| 1.00 |" in table[2]


def test_batches_halve_on_out_of_memory_and_run_every_job_once():
    from maediff_core.device import in_batches

    seen, sizes = [], []

    def run(begin: int, end: int) -> None:
        if end - begin > 3:  # as a GPU that holds 3 at most
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        seen.extend(range(begin, end))

    in_batches(10, 8, run, lambda done, size: sizes.append((done, size)))
    assert seen == list(range(10)) and sizes == [(2, 2), (4, 2), (6, 2), (8, 2), (10, 2)]
    with pytest.raises(OptionError, match="even for a batch of one"):
        in_batches(1, 1, lambda begin, end: run(0, 5), lambda done, size: None)
