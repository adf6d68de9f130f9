"""Training really runs, checkpoints are safetensors + JSON, and a killed run resumes exactly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from conftest import FAST, TINY, TINY_MADAD, run
from safetensors.torch import load_file

from maediff_core.errors import CardError, InputError, OptionError
from maediff_core.methods import get_config
from maediff_core.modelfile import card_markdown, load_card, load_model, rewrite_card, save_model, with_operating_point
from maediff_core.training import TrainConfig, Trainer
from maediff_core.training.settings import (
    COSINE_FLOOR,
    CPU_RECIPE,
    PAPER_RECIPE,
    RESUMED_SETTINGS,
    changed_settings,
    lr_factor,
    resolved,
)


def test_training_writes_checkpoints_metrics_and_loadable_model(tmp_path, healthy_prepared):
    trainer = run(tmp_path, "run", 3, healthy_prepared)
    folder = tmp_path / "run"
    rows = (folder / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "epoch,step,train_loss,val_loss,seconds" and len(rows) == 4
    assert trainer.step == 3 * 2  # 2 training volumes x 4 slices, batch 4
    assert any((folder / "tb").iterdir())
    for stem in ("best", "last"):
        assert (folder / f"{stem}.safetensors").is_file() and json.loads((folder / f"{stem}.json").read_text())
    model, card = load_model(folder / "best.json")
    assert card.config == TINY and card.training["epoch"] >= 1 and card.preprocessing["register"] is False
    assert isinstance(model, torch.nn.Module)


def test_resume_continues_exactly(tmp_path, healthy_prepared):
    # With augmentation (its random draws come from the checkpointed generator too) and an EMA.
    straight = run(tmp_path, "straight", 4, healthy_prepared, augment=True, ema=0.99)
    run(tmp_path, "interrupted", 2, healthy_prepared, augment=True, ema=0.99)
    resumed = run(tmp_path, "interrupted", 4, healthy_prepared, augment=True, ema=0.99)
    assert resumed.epoch == 4 and resumed.step == straight.step
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "last.safetensors"))
    assert int(a["ema.n_averaged"]) == straight.step
    for key in a:
        if key.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # The published weights are the average, not the last step's: after one epoch, best is last.
    run(tmp_path, "plain", 1, healthy_prepared, ema=0.99)
    best = load_file(str(tmp_path / "plain" / "best.safetensors"))
    last = load_file(str(tmp_path / "plain" / "last.safetensors"))
    for key in best:
        torch.testing.assert_close(best[key], last[f"ema.module.{key}"], rtol=0, atol=0, msg=key)
    key = next(k for k in best if k.endswith("conv_in.conv.weight"))
    assert not torch.equal(best[key], last[f"model.{key}"])

    def first_train_loss(name: str) -> str:
        return (tmp_path / name / "metrics.csv").read_text().splitlines()[1].split(",")[2]

    assert first_train_loss("straight") != first_train_loss("plain")  # augmented slices, another loss


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    assert lr_factor(0.0, 0.1) == 0.0 and lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0) and lr_factor(1.0, 0.1) == pytest.approx(COSINE_FLOOR)
    assert lr_factor(0.55, 0.1) == pytest.approx((1 + COSINE_FLOOR) / 2)  # half-way through the decay
    decay = [lr_factor(p, 0.1) for p in torch.linspace(0.1, 1.0, 50).tolist()]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_factor(0.5, 0.0) == pytest.approx((1 + COSINE_FLOOR) / 2)  # no warm-up


def test_cosine_run_stopped_between_epochs_resumes_exactly(tmp_path, healthy_prepared):
    cosine = {"schedule": "cosine", "warmup": 0.2, "lr": 1e-3}
    straight = run(tmp_path, "straight", 3, healthy_prepared, **cosine)
    # The rate of the last step: its progress is the steps done before it over the run's steps.
    last = straight.step - 1
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(
        1e-3 * lr_factor(last / (3 * straight.steps_per_epoch), 0.2))
    first = Trainer(TINY, replace(FAST, epochs=3, **cosine), healthy_prepared, tmp_path / "sliced")
    stopped = first.fit(deadline=0.0)  # past at once: the call ends at its first epoch end
    assert stopped["stopped"] and stopped["epochs"] == 1
    sliced = Trainer(TINY, replace(FAST, epochs=3, **cosine), healthy_prepared, tmp_path / "sliced")
    assert sliced.resume() and sliced.epoch == 1
    assert "stopped" not in sliced.fit()
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "sliced" / "last.safetensors"))
    for key in a:
        if key.startswith("model."):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # A decay over the run's length cannot be stretched on resume; a constant rate can.
    longer = Trainer(TINY, replace(FAST, epochs=5, **cosine), healthy_prepared, tmp_path / "sliced")
    with pytest.raises(CardError, match=r"epochs 3 \(asked 5\); a cosine schedule decays over the run's length"):
        longer.resume()
    run(tmp_path, "constant", 1, healthy_prepared)
    assert run(tmp_path, "constant", 2, healthy_prepared).epoch == 2


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, healthy_prepared):
    folder = tmp_path / "killed"
    command = [sys.executable, "-m", "maediff_core.cli", "train", "--data", str(healthy_prepared),
               "--config", "pddpm-s48-small", "-o", str(folder), "--batch-size", "2", "--device", "cpu"]
    process = subprocess.Popen(command + ["--epochs", "1000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not (folder / "last.json").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    epoch = json.loads((folder / "last.json").read_text())["resume"]["epoch"]
    assert epoch >= 1
    # The same command resumes; --stop-after-minutes ends this call at its next epoch end.
    done = subprocess.run(command + ["--epochs", "1000", "--stop-after-minutes", "0.0001"], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming {folder} at epoch {epoch}" in done.stdout and "stopped after 0.0001 minutes" in done.stdout
    assert json.loads((folder / "last.json").read_text())["resume"]["epoch"] == epoch + 1


def test_a_run_started_from_a_published_model_starts_at_its_weights(tmp_path, healthy_prepared, tiny_model):
    release = tmp_path / "release"
    release.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_model.with_suffix(suffix), release / f"tiny{suffix}")
    # A published card holds its operating point; the network is the same at any t_test and stride.
    card = load_card(release / "tiny.json")
    rewrite_card(with_operating_point(card, 0.05, (150,), 48, {"val": "tumour"}), release / "tiny.json")
    init = str(release / "tiny.json")
    warm = Trainer(TINY, replace(FAST, epochs=1, init=init, ema=0.99), healthy_prepared, tmp_path / "warm")
    published, _ = load_model(init)
    for key, value in published.state_dict().items():  # the network and its EMA start there
        torch.testing.assert_close(warm.network.state_dict()[key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(warm.ema.module.state_dict()[key], value, rtol=0, atol=0, msg=key)
    warm.fit()
    best = load_card(tmp_path / "warm" / "best.json")
    started = best.training["started_from"]
    assert started["model"] == "tiny.json" and started["epoch"] == card.training["epoch"]
    assert started["sha256"] == json.loads((release / "tiny.json").read_text())["weights_sha256"]
    assert best.training["epoch"] == 1 and "started from the weights of `tiny.json`" in card_markdown(best, 1.0)
    # A run from that model keeps the whole lineage, back to the run that started at random.
    third = Trainer(TINY, replace(FAST, epochs=1, init=str(tmp_path / "warm" / "best.json")), healthy_prepared,
                    tmp_path / "third")
    assert third.started_from["model"] == "best.json" and third.started_from["started_from"] == started
    lineage = card_markdown(third.card(), 1.0)
    assert lineage.index("- started from the weights of `best.json`") < lineage.index(
        f"- which started from the weights of `tiny.json` (SHA-256 {started['sha256'][:12]}): "
        f"{started['epoch']} epochs")
    # Resuming needs the weights it started from, not others under the same name.
    other = Trainer(TINY, replace(FAST, epochs=1, seed=7), healthy_prepared, tmp_path / "other")
    save_model(other.network, other.card(), release / "tiny")
    with pytest.raises(CardError, match="started from other weights"):
        Trainer(TINY, replace(FAST, epochs=2, init=init, ema=0.99), healthy_prepared, tmp_path / "warm").resume()
    # nor does a random start
    with pytest.raises(CardError, match=r"trained with init \S*tiny\.json \(asked None\)"):
        Trainer(TINY, replace(FAST, epochs=2, ema=0.99), healthy_prepared, tmp_path / "warm").resume()
    with pytest.raises(CardError, match="a maediff-tiny model cannot start a pddpm-s48-small run"):
        Trainer(get_config("pddpm-s48-small"), replace(FAST, init=init), healthy_prepared, tmp_path / "x")
    with pytest.raises(OptionError, match="trains in stages"):
        Trainer(TINY_MADAD, replace(FAST, init=init), healthy_prepared, tmp_path / "y", stage="denoiser")


def test_refuses_other_config_in_run_folder_and_lesion_data(tmp_path, healthy_prepared):
    run(tmp_path, "run", 1, healthy_prepared)
    other = Trainer(get_config("pddpm-s48-small"), replace(FAST, epochs=1), healthy_prepared, tmp_path / "run")
    with pytest.raises(CardError, match="another configuration"):
        other.resume()
    faster = Trainer(TINY, replace(FAST, epochs=2, lr=1e-3), healthy_prepared, tmp_path / "run")
    with pytest.raises(CardError, match=r"trained with lr 0\.0001 \(asked 0\.001\)"):
        faster.resume()
    augmented = Trainer(TINY, replace(FAST, epochs=2, augment=True), healthy_prepared, tmp_path / "run")
    with pytest.raises(CardError, match=r"trained with augment False \(asked True\)"):
        augmented.resume()
    # A record from before augmentation, the EMA and the schedule existed trained without them.
    plain = resolved(FAST, TINY)
    old = {k: getattr(plain, k) for k in RESUMED_SETTINGS if k not in ("augment", "schedule", "warmup")}
    assert changed_settings({**old, "ema": None}, plain) == []
    # Left unset, augmentation follows the method's paper: on for cDDPM only.
    assert (plain.augment, resolved(FAST, get_config("cddpm-small")).augment) == (False, True)
    assert resolved(replace(FAST, augment=False), get_config("cddpm-small")).augment is False
    with pytest.raises(InputError, match="no prepared cases|split.csv"):
        Trainer(TINY, FAST, tmp_path / "empty", tmp_path / "x")


def test_small_configurations_train_with_the_cpu_recipe_and_paper_sizes_with_the_papers():
    recipe = ("batch_size", "lr", "slices_per_volume", "ema", "schedule")
    for name, expected in (("maediff-small", CPU_RECIPE), ("cddpm-small", CPU_RECIPE), ("maediff", PAPER_RECIPE),
                           ("cddpm", PAPER_RECIPE), ("maediff-tiny", PAPER_RECIPE)):
        config = TINY if name == "maediff-tiny" else get_config(name)
        train = resolved(replace(FAST, batch_size=None, slices_per_volume=None), config)
        assert tuple(getattr(train, key) for key in recipe) == tuple(getattr(expected, key) for key in recipe), name
    assert PAPER_RECIPE.batch_size == 32 and PAPER_RECIPE.lr == 1e-4 and PAPER_RECIPE.schedule == "constant"
    # What the user sets stays: no EMA (0), a constant rate.
    mine = resolved(TrainConfig(ema=0.0, schedule="constant", lr=2e-4), get_config("maediff-small"))
    assert (mine.ema, mine.schedule, mine.lr, mine.batch_size) == (0.0, "constant", 2e-4, CPU_RECIPE.batch_size)


def test_distributed_data_parallel_with_torchrun(tmp_path, healthy_prepared):
    folder = tmp_path / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "maediff_core.cli", "train",
                           "--data", str(healthy_prepared), "--config", "pddpm-s48-small", "-o", str(folder),
                           "--epochs", "1", "--batch-size", "2", "--slices-per-volume", "2", "--device", "cpu"],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((folder / "last.json").read_text())
    assert saved["card"]["training"]["world_size"] == 2 and saved["resume"]["step"] == 1  # 4 slices / 2 ranks / 2


def test_publish_writes_weights_only_and_honest_cards(tmp_path, tiny_model):
    recipe = tmp_path / "recipe.sh"
    recipe.write_text("maediff train --config maediff-tiny\n")
    out = subprocess.run([sys.executable, "-m", "maediff_core.cli", "publish", str(tiny_model), "-o",
                          str(tmp_path / "release" / "tiny"), "--synthetic-data", "--recipe", str(recipe),
                          "--description", "tiny test model"], capture_output=True, text=True,
                         encoding="utf-8", errors="replace")
    assert out.returncode == 0, out.stderr
    weights = tmp_path / "release" / "tiny.safetensors"
    assert all(not key.startswith(("optim.", "rng.")) for key in load_file(str(weights)))
    model, card = load_model(weights)
    assert card.description == "tiny test model" and card.training["synthetic_data"] is True
    assert card.training["command"].startswith("maediff train") and card.threshold == 0.05
    text = (tmp_path / "release" / "tiny.md").read_text()
    assert "synthetic data" in text and "not be\nused for diagnosis" in text and "maediff prepare /data/IXI-T2" in text
    assert "0.05" in text and "maediff train --config maediff-tiny" in text
    assert card.onnx["denoiser"]["file"] == "tiny.denoiser.onnx"
    assert (tmp_path / "release" / "tiny.denoiser.onnx").is_file()
    # Published again without the flags: what the card already records stands.
    again = subprocess.run([sys.executable, "-m", "maediff_core.cli", "publish", str(weights), "-o",
                            str(tmp_path / "again" / "tiny"), "--description", "again", "--half", "--no-onnx"],
                           capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert again.returncode == 0, again.stderr
    card = load_model(tmp_path / "again" / "tiny.json")[1]
    assert card.training["synthetic_data"] is True and card.training["weights_dtype"] == "float16" and not card.onnx
    assert not list((tmp_path / "again").glob("*.onnx"))


def test_bench_train_times_a_real_training_step_per_variant_and_batch():
    done = subprocess.run([sys.executable, "-m", "maediff_core.cli", "bench-train", "--config", "anoddpm-small",
                           "--batch-size", "1", "2", "--variant", "eager", "channels_last", "--steps", "1",
                           "--device", "cpu"], capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if "ms/sample" in line]
    assert [(row[0], int(row[2].rstrip(":"))) for row in rows] == [("eager", 1), ("eager", 2), ("channels_last", 1),
                                                                    ("channels_last", 2)]
    assert all(float(row[3]) > 0 for row in rows)
