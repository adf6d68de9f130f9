"""One test over every registered method (methods/): each stage's objective learns, every stage trains
through the one Trainer, the model loads, its card round-trips, it publishes and it reconstructs a
volume; and a sixth method is its own folder plus one registry line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import FAST, TINY_CONFIGS

from maediff_core.cache import load_prepared, select, split_of
from maediff_core.detect import DetectConfig, reconstruct, reconstruct_samples
from maediff_core.diffusion import Diffusion
from maediff_core.errors import CardError, OptionError
from maediff_core.methods import REGISTRY, method_of
from maediff_core.modelfile import ModelCard, card_markdown, load_card, load_model, publish_model
from maediff_core.modelfile.onnx_export import OPSET, export_onnx
from maediff_core.profile import count, describe
from maediff_core.runtime import exported, load_runtime, onnx_session
from maediff_core.scoring import ScoringConfig
from maediff_core.torch_runtime import TorchRuntime
from maediff_core.training import train

sys.path.insert(0, str(Path(__file__).parent))
import toy_method  # noqa: E402 - a method folder outside the package, as a newcomer's


def test_every_registered_method_is_tested_here():
    assert set(TINY_CONFIGS) == set(REGISTRY)


def with_optional_stages(config) -> bool:
    method = method_of(config.method)
    return len(method.stages(config, pretrain=True)) > len(method.stages(config))


def brain_batch(prepared, count=4):
    case = load_prepared(prepared, select(split_of(prepared), "train", 0))[0]
    chosen = np.flatnonzero(case.mask.reshape(len(case.mask), -1).mean(1) > 0.2)[::6][:count]
    return (torch.from_numpy(case.image[chosen] * 2 - 1).unsqueeze(1),
            torch.from_numpy(case.mask[chosen].astype(np.float32)).unsqueeze(1))


@pytest.mark.parametrize("method", sorted(TINY_CONFIGS))
def test_each_stage_learns_a_fixed_batch(method, healthy_prepared):
    """25 steps on the same slices, noise and timesteps: every stage's objective must fall."""
    config = TINY_CONFIGS[method]
    x0, brain = brain_batch(healthy_prepared, count=2)
    diffusion = Diffusion(config.diffusion)
    for stage in method_of(method).stages(config, pretrain=True):
        torch.manual_seed(0)
        network = config.build()
        module = stage.trains(network).train()
        objective = stage.objective(network, diffusion)
        optimizer = stage.optimizer(module.parameters(), 1e-3)
        losses = []
        for _ in range(25):
            loss = objective(module, x0, brain, torch.Generator().manual_seed(0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), (stage.name, losses)


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def trained(request, tmp_path_factory, healthy_prepared):
    """Every stage of a tiny configuration, one epoch each, as `maediff train` runs them."""
    config = TINY_CONFIGS[request.param]
    folder = tmp_path_factory.mktemp(request.param) / "run"
    result = train(config, healthy_prepared, folder, replace(FAST, epochs=1, pretrain=with_optional_stages(config)))
    return config, folder, result


def test_every_stage_trains_and_the_model_loads_round_trips_and_publishes(trained, tmp_path):
    config, folder, result = trained
    method = method_of(config.method)
    stages = method.stages(config, pretrain=with_optional_stages(config))
    assert result["epochs"] == 1 and ("seconds_all_stages" in result) == (len(stages) > 1)
    for stage in stages:
        stage_folder = folder if stage is stages[-1] else folder / stage.name
        assert len((stage_folder / "metrics.csv").read_text().splitlines()) == 2
        assert (stage_folder / "best.safetensors").is_file() and (stage_folder / "last.safetensors").is_file()
    model, card = load_model(folder / "best.json")
    assert type(card.config) is method.config_class and card.config == config
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    assert set(card.extra_weights) == set(method.extra_weights)
    markdown = card_markdown(card, 1.0)
    assert f"method `{config.method}`" in markdown and card.score in markdown
    for stage in stages[:-1]:
        assert card.training[stage.name]["epoch"] == 1 and f"before it, {stage.title}: 1 epochs" in markdown
        with pytest.raises(ValueError, match=f"this is a run's {stage.name} stage, not a model"):
            load_card(folder / stage.name / "best.json")

    published = publish_model(folder / "best.json", tmp_path / "release" / "model", "tiny")
    assert [p.name for p in published] == (["model.safetensors"]
                                           + [f"model.{name}.safetensors" for name in method.extra_weights]
                                           + ["model.json", "model.md"])
    again, again_card = load_model(tmp_path / "release" / "model.json")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert again_card.config == config and again_card.description == "tiny"


def test_every_network_detection_runs_exports_to_onnx_as_torch_computes_it(trained, tmp_path, healthy_prepared,
                                                                          detection_run):
    """`maediff export-onnx`'s work for each method: one file per network its detection runs, named
    in the card with its hash, opset, inputs, outputs and parity; a batch size the export never saw
    gives torch's numbers; detection on ONNX Runtime reconstructs as torch does (the same noise from a seed),
    and `maediff detect --runtime onnx` runs where torch and MONAI cannot be imported; a damaged
    file is refused."""
    config, folder, _ = trained
    method = method_of(config.method)
    publish_model(folder / "best.json", tmp_path / "model", "tiny")
    written = export_onnx(tmp_path / "model.json")
    assert [p.name for p in written] == [f"model.{name}.onnx" for name in method.graph_names]
    model, card = load_model(tmp_path / "model.json")
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    assert "ONNX (for detection without torch)" in card_markdown(card, 1.0)
    files = exported(card)
    for name, graph in method.graphs(config, model).items():
        entry = card.onnx[name]
        assert entry["opset"] == OPSET and entry["inputs"] == list(graph.inputs) and 0 <= entry["parity"] <= 1e-4
        three = {k: torch.cat([v, v[:1]]) for k, v in graph.inputs.items()}
        with torch.no_grad():
            expected = graph.module(*three.values())
        found = onnx_session(files[name]).run(None, {k: v.numpy() for k, v in three.items()})
        for f, e in zip(found, expected if isinstance(expected, tuple) else (expected,), strict=True):
            np.testing.assert_allclose(f, e.numpy(), rtol=0, atol=1e-4)
    if "onnx" in method.runtimes:
        on_torch, (on_onnx, _) = TorchRuntime(model, card), load_runtime(tmp_path / "model.json", "onnx")
        case = load_prepared(healthy_prepared, select(split_of(healthy_prepared), "val", 0))[0]
        image, mask, draw = case.image[20:23], case.mask[20:23], DetectConfig(seed=3, scoring=ScoringConfig("mean", 2))
        np.testing.assert_allclose(reconstruct_samples(on_onnx, card, image, mask, draw),
                                   reconstruct_samples(on_torch, card, image, mask, draw), rtol=0, atol=1e-4)
        if config.method == "maediff":  # the command line's path is the same for every method: run once
            detect_without_torch(detection_run["folder"] / "input.nii.gz", tmp_path / "model.json", tmp_path / "out")
    else:
        with pytest.raises(OptionError, match=rf"\({config.method}\) detects on torch only, not onnx"):
            load_runtime(tmp_path / "model.json", "onnx")
    damaged = written[0]
    damaged.write_bytes(damaged.read_bytes()[:-1])
    with pytest.raises(CardError, match="does not match the model card"):
        exported(load_card(tmp_path / "model.json"))


BLOCK_TORCH = """
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "monai", "einops", "safetensors"):
            raise ImportError(f"{name} is not installed")
sys.meta_path.insert(0, Absent())
from maediff_core.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "monai", "einops", "safetensors")]
sys.exit(code)
"""


def detect_without_torch(volume: Path, model: Path, out: Path) -> None:
    """`maediff detect` in a Python where torch and what the module installs beside it (MONAI, einops,
    safetensors) cannot be imported, as a Slicer without the PyTorch extension: the runtime it picks
    by itself is ONNX Runtime."""
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "detect", str(volume), "-o", str(out), "--model",
                           str(model), "--no-register", "--mask-method", "skull-stripped", "--threshold", "0.1",
                           "--stride", "48"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "input" / "lesions.json").read_text())
    assert summary["runtime"] == "onnx" and summary["device"] == "cpu (ONNX Runtime)"


def test_the_model_reconstructs_a_volume_the_same_way_each_time(trained, healthy_prepared):
    config, folder, _ = trained
    model, card = load_model(folder / "best.json")
    case = load_prepared(healthy_prepared, select(split_of(healthy_prepared), "val", 0))[0]
    image, mask = case.image[20:23], case.mask[20:23]
    stages = []
    runtime = TorchRuntime(model, card)
    rec = reconstruct(runtime, card, image, mask, DetectConfig(seed=3), progress=lambda *a: stages.append(a[0]))
    assert rec.shape == image.shape and rec.dtype == np.float32 and 0 <= rec.min() and rec.max() <= 1
    assert stages and set(stages) == {"reconstruct"}
    np.testing.assert_allclose(reconstruct(runtime, card, image, mask, DetectConfig(seed=3)), rec, rtol=0, atol=1e-6)
    assert np.abs(rec - image)[mask].mean() < 0.5  # a reconstruction of this slab, not noise


def test_the_command_line_refuses_stages_a_method_does_not_have(tmp_path, healthy_prepared, capsys):
    from maediff_core.cli import main

    common = ["train", "--data", str(healthy_prepared), "-o", str(tmp_path / "run"), "--epochs", "1"]
    refusals = {("madad-small", "--stage", "denoiser"): "autoencoder/best.json: no trained autoencoder",
                ("maediff-small", "--stage", "autoencoder"): "maediff-small trains in one stage; leave out --stage",
                ("maediff-small", "--pretrain"): "maediff-small has none",
                ("madad-small", "--stage", "encoder"): "madad-small trains in the stages autoencoder, denoiser",
                ("cddpm-small", "--stage", "denoiser"): "cddpm-small trains in the stages encoder"}
    for (config, *options), message in refusals.items():
        capsys.readouterr()
        assert main([*common, "--config", config, *options]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.json").exists()


def test_maediff_models_counts_every_method():
    for config in TINY_CONFIGS.values():
        c = count(config)
        model = config.build()
        assert c["parameters_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
        assert c["gflop_per_forward"] > 0 and c["gflop_per_slice"] >= c["gflop_per_forward"] and c["passes"] >= 1
        assert describe(config).startswith(config.name)


def test_a_sixth_method_is_its_own_folder_and_one_registry_line(tmp_path, monkeypatch, healthy_prepared,
                                                                 lesion_prepared, atlas, capsys):
    from maediff_core.cli import main
    from maediff_core.phantom import PhantomConfig, make_phantom
    from maediff_core.volume_io import write_volume

    monkeypatch.setitem(REGISTRY, "toy", toy_method.METHODS[0])  # the registry line
    run = tmp_path / "run"
    assert main(["train", "--config", "toy", "--data", str(healthy_prepared), "-o", str(run), "--epochs", "2",
                 "--batch-size", "4", "--slices-per-volume", "2", "--device", "cpu"]) == 0
    model, card = load_model(run / "best.json")
    assert isinstance(model, toy_method.ToyNet) and type(card.config) is toy_method.ToyConfig
    assert card.config.width == 8 and card.training["epoch"] == 2
    assert "|input - denoised input|" in card_markdown(card, 1.0)
    assert main(["models", "toy"]) == 0 and "toy" in capsys.readouterr().out

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run / "best.json"), "--val", str(lesion_prepared), "--test",
                 str(lesion_prepared), "--use-splits", "--save-threshold", "-o", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["threshold"] == load_card(run / "best.json").threshold

    phantom = make_phantom("tumour", 31, PhantomConfig(skull_probability=0.0), atlas, native_grid=atlas.template,
                           pose=sitk.AffineTransform(3))
    volume = write_volume(phantom.image, tmp_path / "input.nii.gz")
    assert main(["detect", str(volume), "-o", str(tmp_path / "detect"), "--model", str(run / "best.json"),
                 "--no-register", "--mask-method", "skull-stripped"]) == 0
    summary = json.loads((tmp_path / "detect" / "input" / "lesions.json").read_text())
    assert summary["model"] == "toy" and summary["detect"]["stride"] == card.config.patch.stride
    # The card names its method: without the registry line it is refused, not misread.
    monkeypatch.delitem(REGISTRY, "toy")
    with pytest.raises(ValueError, match="method must be one of"):
        load_card(run / "best.json")
