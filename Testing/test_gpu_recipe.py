"""The GPU recipe (scripts/gpu/) end to end on CPU for a few steps, as the device runs it: the data
packed, training where SimpleITK cannot be imported, an exact resume in a second call, float16
weights back through $OUT, then evaluation and the release here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open

from maediff_core.cache import load_prepared, pack_prepared, split_of
from maediff_core.modelfile import load_model

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, cwd: Path, env: dict) -> str:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu" / name), *args], cwd=cwd, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_pack_holds_the_cache_to_a_255th(tmp_path, lesion_prepared):
    summary = pack_prepared(lesion_prepared, tmp_path / "lesions.npz")
    assert summary["cases"] == 3 and summary["bytes"] < 3 * 300_000  # 461 kB a volume before compression
    assert split_of(tmp_path / "lesions.npz") == split_of(lesion_prepared)
    for packed, folder in zip(load_prepared(tmp_path / "lesions.npz"), load_prepared(lesion_prepared), strict=True):
        assert packed.name == folder.name and packed.record == folder.record
        assert np.abs(packed.image - folder.image).max() <= 0.5 / 255 + 1e-7
        np.testing.assert_array_equal(packed.mask, folder.mask)
        np.testing.assert_array_equal(packed.seg, folder.seg)


def test_the_gpu_recipe_runs_end_to_end_on_cpu(tmp_path, healthy_prepared, lesion_prepared):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "SimpleITK.py").write_text("raise ImportError('SimpleITK is not installed on the GPU machine')\n")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "SKIP_WHEELS": "1"}
    assert "packed .gpu" in _script("pack.sh", str(healthy_prepared), cwd=work, env=env)
    assert not load_prepared(work / ".gpu" / "data.npz")[0].seg  # the healthy training cases only

    # Each call ends at its first epoch end past CALL_MINUTES: one epoch here, then the same command resumes.
    device = {**env, "OUT": str(out), "PYTHONPATH": str(blocked), "CALL_MINUTES": "0.0001"}
    # AnoDDPM: one patch position; 2 slices of each volume an epoch, for a few steps.
    train = ["anoddpm-small", "5", "--batch-size", "2", "--slices-per-volume", "2", "--device", "cpu", "--epochs", "2"]
    assert "stopped after 0.0001 minutes of this call" in _script("train.sh", *train, cwd=work, env=device)
    assert json.loads((out / "last.json").read_text())["resume"]["epoch"] == 1
    log = _script("train.sh", *train, cwd=work, env=device)
    assert "resuming .gpu/run at epoch 1" in log and "stopped after" not in log
    assert sorted(p.name for p in out.iterdir()) == ["best.json", "best.md", "best.safetensors", "last.json",
                                                     "metrics.csv"]
    assert json.loads((out / "last.json").read_text())["resume"]["epoch"] == 2
    with safe_open(str(out / "best.safetensors"), framework="pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {__import__("torch").float16}
    for path in out.iterdir():
        path.chmod(0o444)  # as the device tool hands them over

    _script("finish.sh", str(out), str(lesion_prepared), str(work / "release" / "gpu"), "GPU test model",
            "--synthetic-data", cwd=work, env={**env, "T_TEST": "150"})
    model, card = load_model(work / "release" / "gpu.json")
    assert card.threshold is not None and card.config.diffusion.t_test == (150,)
    assert card.training["weights_dtype"] == "float16" and card.training["synthetic_data"] is True
    assert (work / "runs" / "gpu" / "eval" / "metrics.json").is_file()
