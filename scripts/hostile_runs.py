"""The reliability review as a command: every hostile case, run through `maediff` as a user would,
printed as one Markdown row per case: exit code, the message's last line, seconds, what the run left
in its output, whether its inputs are unchanged, and the verdict. About 10 minutes on 2 cores.

Usage: python scripts/hostile_runs.py [--work DIR]    (default: a new temporary folder, kept)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

from dicom_series import write_dicom_series  # noqa: E402

from maediff_core.modelfile import load_model, save_model  # noqa: E402
from maediff_core.resources import default_model_path, sample_paths  # noqa: E402
from maediff_core.volume_io import read_volume  # noqa: E402

MAEDIFF = [sys.executable, "-m", "maediff_core.cli"]
FAST_S = 15.0  # seconds: a refusal before preprocessing (which takes ~20 s)


@dataclass
class Case:
    name: str
    args: list[str]
    exit: int  # expected exit code (-9: killed on purpose)
    message: str = ""  # expected in the output
    inputs: list[Path] = field(default_factory=list)  # must be byte-identical afterwards
    out: Path | None = None  # output folder to audit
    kill_at: str | None = None  # `--progress json` stage at which the run is killed
    limit_bytes: int | None = None  # largest file the run may write (a full disk)
    within_s: float | None = None  # a refusal must come this fast (before preprocessing)
    before: Callable[[], None] | None = None  # sets the stage (e.g. damages a checkpoint)


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                h.update(file.read_bytes())
    return h.hexdigest()


def audit(out: Path | None) -> tuple[str, bool]:
    """What is left under ``out``, and whether all of it is complete: no temporary names, and every
    result folder has its lesions.json and volumes that read back."""
    if out is None or not out.exists():
        return "nothing", True
    if out.is_file():
        return "the file as it was", True
    left, complete = [], True
    for entry in sorted(out.iterdir()):
        if entry.name.startswith("."):
            left.append(f"temporary {entry.name}")
            complete = False
        elif entry.is_dir() and (entry / "lesions.json").is_file():
            try:
                for volume in entry.rglob("*.nii.gz"):
                    read_volume(volume)
                json.loads((entry / "lesions.json").read_text())
                left.append(f"{entry.name}/ complete")
            except ValueError:  # a volume that does not read back (MaediffError), or broken JSON
                left.append(f"{entry.name}/ DAMAGED")
                complete = False
        elif entry.is_dir() and (entry / "record.json").is_file():
            left.append(f"{entry.name}/ complete")
        else:
            left.append(f"{entry.name} incomplete")
            complete = False
    return ", ".join(left) or "empty folder", complete


def run(case: Case) -> dict:
    if case.before:
        case.before()
    before = digest(case.inputs)

    def limits() -> None:
        if case.limit_bytes:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.limit_bytes, case.limit_bytes))

    args = case.args + (["--progress", "json"] if case.kill_at else [])
    start = time.perf_counter()
    process = subprocess.Popen(MAEDIFF + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                               errors="replace", preexec_fn=limits)
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip())
        if case.kill_at and f'"stage": "{case.kill_at}"' in line:
            process.kill()
            break
    process.wait()
    seconds = time.perf_counter() - start
    text = "\n".join(lines)
    message = next((line for line in reversed(lines) if line.strip() and not line.startswith("{")), "")
    left, complete = audit(case.out)
    unchanged = digest(case.inputs) == before
    ok = (process.returncode == case.exit and case.message in text and "Traceback" not in text and complete
          and unchanged and (case.within_s is None or seconds <= case.within_s))
    return {"case": case.name, "exit": process.returncode, "message": message[-150:], "seconds": seconds,
            "left": left, "unchanged": unchanged, "ok": ok}


def inputs(work: Path) -> dict[str, Path]:
    """The bundled sample and hostile variants of it."""
    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    sample = sitk.ReadImage(str(sample_paths()[0]))
    paths = {"sample": folder / "sample.nii.gz"}
    shutil.copy(sample_paths()[0], paths["sample"])
    for name in ("a", "b"):
        (folder / name).mkdir(exist_ok=True)
        paths[f"{name}/T2"] = shutil.copy(sample_paths()[0], folder / name / "T2.nii.gz")
    for suffix in (".nii.gz", ".nii"):
        whole = folder / f"whole{suffix}"
        sitk.WriteImage(sample, str(whole))
        data = whole.read_bytes()
        paths[f"half{suffix}"] = folder / f"half{suffix}"
        paths[f"half{suffix}"].write_bytes(data[: len(data) // 2])
        whole.unlink()
    array = sitk.GetArrayFromImage(sitk.Cast(sample, sitk.sitkFloat32))
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = array.copy()
        bad[bad.shape[0] // 2, 40, 40] = value
        image = sitk.GetImageFromArray(bad)
        image.CopyInformation(sample)
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    series = sitk.Cast(sitk.Shrink(sample, [2, 2, 1]), sitk.sitkInt16)
    files = write_dicom_series(series, folder / "dicom-gap")
    os.unlink(files[len(files) // 2])
    paths["dicom-gap"] = folder / "dicom-gap"
    thin = sitk.Image(sample)
    thin.SetSpacing((0.06, 0.06, 0.06))
    paths["spacing"] = folder / "spacing-0.06.nii.gz"
    sitk.WriteImage(thin, str(paths["spacing"]))
    rng = np.random.default_rng(0)
    negative = sitk.GetImageFromArray(-1.0 - array)
    negative.CopyInformation(sample)
    paths["negative"] = folder / "negative.nii.gz"
    sitk.WriteImage(negative, str(paths["negative"]))
    noise = sitk.GetImageFromArray(rng.random(array.shape).astype(np.float32) * 1000)
    noise.CopyInformation(sample)
    paths["noise"] = folder / "noise.nii.gz"
    sitk.WriteImage(noise, str(paths["noise"]))
    index = np.indices(array.shape).reshape(3, -1).T[:, ::-1]  # (x, y, z) of every voxel
    centre = np.array(sample.TransformContinuousIndexToPhysicalPoint((np.array(sample.GetSize()) / 2).tolist()))
    direction = np.array(sample.GetDirection()).reshape(3, 3)
    points = np.array(sample.GetOrigin()) + (index * sample.GetSpacing()) @ direction.T
    ball = (np.linalg.norm(points - centre, axis=1) < 70).reshape(array.shape)
    sphere = sitk.GetImageFromArray((ball * 800 + rng.random(array.shape) * 50).astype(np.float32))
    sphere.CopyInformation(sample)
    paths["sphere"] = folder / "sphere.nii.gz"
    sitk.WriteImage(sphere, str(paths["sphere"]))
    paths["file"] = folder / "existing-file"
    paths["file"].write_text("not a folder\n")
    return paths


def models(work: Path) -> dict[str, Path]:
    """The bundled model and broken copies of its card and weights."""
    folder = work / "models"
    folder.mkdir(parents=True, exist_ok=True)
    source = default_model_path()
    card = json.loads(source.read_text())
    weights = source.with_suffix(".safetensors")
    paths = {"demo": folder / "demo.json"}
    shutil.copy(source, paths["demo"])
    shutil.copy(weights, folder / "demo.safetensors")
    edits = {
        "channels abc": lambda c: c["config"]["unet"].update(channels="abc"),
        "stride '16'": lambda c: c["config"]["patch"].update(stride="16"),
        "timesteps '1000'": lambda c: c["config"]["diffusion"].update(timesteps="1000"),
        "schedule 'cubic'": lambda c: c["config"]["diffusion"].update(schedule="cubic"),
        "percentiles abc": lambda c: c["preprocessing"].update(percentiles="abc"),
        "unknown preprocessing key": lambda c: c["preprocessing"].update(sharpen=True),
        "threshold 'abc'": lambda c: c.update(threshold="abc"),
        "threshold NaN": lambda c: c.update(threshold=float("nan")),
        "channels [2048, 4096, 4096]": lambda c: c["config"]["unet"].update(channels=[2048, 4096, 4096]),
        "wrong tensor shapes": lambda c: c["config"]["unet"].update(channels=[64, 128, 128]),
        "atlas /etc": lambda c: c["preprocessing"].update(atlas="/etc"),
    }
    for name, edit in edits.items():
        broken = json.loads(json.dumps(card))
        edit(broken)
        stem = folder / name.replace(" ", "_").replace("'", "").replace("/", "")
        stem.with_suffix(".json").write_text(json.dumps(broken))
        shutil.copy(weights, stem.with_suffix(".safetensors"))
        paths[name] = stem.with_suffix(".json")
    model, loaded = load_model(source)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_model(model, loaded, folder / "nan-weights")
    paths["NaN weights"] = folder / "nan-weights.json"
    shutil.copy(source, folder / "pickle.json")
    with open(folder / "pickle.safetensors", "wb") as handle:  # its payload would create a file
        pickle.dump(Payload(str(work / "pickle-ran")), handle)
    paths["pickle"] = folder / "pickle.json"
    atlas = work / "atlas-escape"
    atlas.mkdir(exist_ok=True)
    info = json.loads((ROOT / "Resources" / "atlas" / "atlas.json").read_text())
    info["files"]["t1"] = "../" * 12 + "etc/hostname"
    (atlas / "atlas.json").write_text(json.dumps(info))
    paths["atlas escape"] = atlas
    return paths


class Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def detect(path: Path | list[Path], out: Path, model: Path, *extra: str) -> list[str]:
    paths = [str(p) for p in (path if isinstance(path, list) else [path])]
    return ["detect", *paths, "-o", str(out), "--stride", "48", "--model", str(model), *extra]


def cases(work: Path, i: dict[str, Path], m: dict[str, Path]) -> list[Case]:
    o = work / "out"
    sample, demo = i["sample"], m["demo"]
    every = [sample, demo, demo.with_suffix(".safetensors")]
    fast = FAST_S
    result = [
        Case("valid detection (reference result)", detect(sample, o / "kill-write", demo), 0, "lesion(s)", every,
             o / "kill-write"),
        Case("kill in the write stage over an earlier result", detect(sample, o / "kill-write", demo), -9, "",
             every, o / "kill-write", kill_at="write"),
        Case("kill during reconstruction", detect(sample, o / "kill-rec", demo), -9, "", every, o / "kill-rec",
             kill_at="reconstruct"),
        Case("full disk (files over 1 MB fail)", detect(sample, o / "full", demo), 2, "is the disk full?", every,
             o / "full", limit_bytes=1_000_000),
        Case("detect: two inputs named T2", detect([i["a/T2"], i["b/T2"]], o / "same", demo), 2,
             "would both write", [i["a/T2"], i["b/T2"]], o / "same", within_s=fast),
        Case("preprocess: two inputs named T2", ["preprocess", str(i["a/T2"]), str(i["b/T2"]), "-o", str(o / "same-p")],
             2, "would both write", [i["a/T2"], i["b/T2"]], o / "same-p", within_s=fast),
        Case("-o is an existing file", detect(sample, i["file"], demo), 2, "cannot write results there",
             every + [i["file"]], i["file"], within_s=fast),
        Case("-o cannot be created (/proc)", detect(sample, Path("/proc/maediff-out"), demo), 2,
             "cannot write results there", every, within_s=fast),
    ]
    refusals = {
        "truncated .nii.gz": (i["half.nii.gz"], "cut short"),
        "truncated .nii": (i["half.nii"], "cut short"),
        "NaN voxel in .nii.gz": (i["nan"], "1 voxels are NaN or infinite"),
        "Inf voxel in .nii.gz": (i["inf"], "1 voxels are NaN or infinite"),
        "DICOM series with a missing slice": (i["dicom-gap"], "slices missing or unevenly spaced"),
        "spacing 0.06 mm": (i["spacing"], "implausible voxel spacing"),
    }
    for name, (path, message) in refusals.items():
        result.append(Case(name, detect(path, o / "refused", demo), 2, message, every + [path], o / "refused",
                           within_s=fast))
    result.append(Case("all voxels negative", detect(i["negative"], o / "refused", demo), 2, "no voxel is above 0",
                       every + [i["negative"]], o / "refused"))
    for name in ("noise", "sphere"):
        result.append(Case(f"{name} instead of a head (preprocess)", ["preprocess", str(i[name]), "-o", str(o / name)],
                           0, "warning:", [i[name]], o / name))
    options = {
        "--stride -16": ("--stride", "-16"), "--stride 0": ("--stride", "0"), "--t-test 0": ("--t-test", "0"),
        "--batch-size 0": ("--batch-size", "0"), "--batch-size -1": ("--batch-size", "-1"),
        "--t-test 5000": ("--t-test", "5000"), "--threshold nan": ("--threshold", "nan"),
        "--threshold -1": ("--threshold", "-1"), "--device cuda (no GPU)": ("--device", "cuda"),
    }
    messages = {"--t-test 5000": "t-test must be one or more levels in 1..1000",
                "--threshold nan": "must be a finite number >= 0", "--threshold -1": "must be a finite number >= 0",
                "--device cuda (no GPU)": "CUDA"}
    for name, option in options.items():
        args = detect(sample, o / "refused", demo, *option)
        if name == "--stride -16":  # argparse reads "-16" as an option: the = form is what users type
            args = detect(sample, o / "refused", demo, "--stride=-16")
        expected = 0 if name == "--device cuda (no GPU)" and torch.cuda.is_available() else 2
        result.append(Case(name, args, expected, messages.get(name, "must be a positive integer"), every,
                           o / "refused", within_s=fast))
    result.append(Case("--stride 20 (does not tile 96)", detect(sample, o / "refused", demo, "--stride", "20"), 2,
                       "does not tile", every, o / "refused", within_s=fast))
    card_messages = {
        "channels abc": "config.unet.channels: expected a list",
        "stride '16'": "config.patch.stride: expected an integer",
        "timesteps '1000'": "config.diffusion.timesteps: expected an integer", "schedule 'cubic'": "schedule must be",
        "percentiles abc": "preprocessing.percentiles: expected a list",
        "unknown preprocessing key": "unknown setting(s) sharpen",
        "threshold 'abc'": "threshold: expected a finite number",
        "threshold NaN": "threshold: expected a finite number",
        "channels [2048, 4096, 4096]": "the limit is 1000 M", "wrong tensor shapes": "do not fit the configuration",
        "atlas /etc": "outside the model's folder", "NaN weights": "hold NaN or infinite values",
        "pickle": "pickle.safetensors: does not match pickle.json",
    }
    for name, message in card_messages.items():
        args = ["detect", str(sample), "-o", str(o / "refused"), "--model", str(m[name])]
        result.append(Case(f"card: {name}", args, 2, message, [sample, m[name]], o / "refused", within_s=fast))
    result.append(Case("user atlas naming ../../etc/hostname", detect(sample, o / "refused", demo, "--atlas",
                                                                       str(m["atlas escape"])), 2,
                       "outside the atlas folder", every, o / "refused", within_s=fast))
    return result


def training_cases(work: Path) -> list[Case]:
    data, runs = work / "healthy-prepared", work / "runs"
    base = ["train", "--data", str(data), "--config", "pddpm-s48-small", "--batch-size", "2", "--device", "cpu"]
    refused = ["train", "--data", str(data), "--config", "pddpm-s48-small", "-o", str(runs / "x")]
    return [
        Case("train --batch-size -1", [*refused, "--batch-size=-1"], 2, "must be a positive integer", [data],
             within_s=FAST_S),
        Case("train --lr nan", [*refused, "--lr", "nan"], 2, "must be a finite number > 0", [data], within_s=FAST_S),
        Case("train one epoch", base + ["-o", str(runs / "run"), "--epochs", "1"], 0, "", [data]),
        Case("train resumes from a damaged last.safetensors", base + ["-o", str(runs / "damaged"), "--epochs", "2"], 2,
             "does not match last.json", [data],
             before=lambda: damaged_checkpoint(base + ["-o", str(runs / "damaged")])),
    ]


def damaged_checkpoint(train: list[str]) -> None:
    """One epoch of the 2-epoch run trained, then one byte of its last weights flipped."""
    subprocess.run(MAEDIFF + train + ["--epochs", "2", "--stop-after-minutes", "0.0001"], check=True,
                   capture_output=True)
    weights = Path(train[-1]) / "last.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def prepare_training_data(work: Path) -> None:
    subprocess.run(MAEDIFF + ["phantom", "healthy", "-o", str(work / "healthy"), "-n", "6"], check=True,
                   capture_output=True)
    subprocess.run(MAEDIFF + ["prepare", str(work / "healthy"), "-o", str(work / "healthy-prepared")], check=True,
                   capture_output=True)


def killed_training(work: Path, kills: int = 4) -> dict:
    """Kill a training run at staggered moments, resume it each time: every resume must load a pair
    that verifies and continue from it."""
    data, folder = work / "healthy-prepared", work / "runs" / "killed"
    command = MAEDIFF + ["train", "--data", str(data), "--config", "pddpm-s48-small", "-o", str(folder),
                         "--batch-size", "2", "--device", "cpu", "--epochs", "1000"]
    start, resumed, failures = time.perf_counter(), 0, []
    for k in range(kills):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                                   errors="replace")
        time.sleep(8 + 1.7 * k)
        process.kill()
        out, _ = process.communicate()
        resumed += "resuming" in out
        if "Traceback" in out or "error" in out:
            failures.append(out.strip().splitlines()[-1])
    # Resume once more, then stop.
    done = subprocess.run([*command[:-1], "1"], capture_output=True, encoding="utf-8", errors="replace")
    ok = done.returncode == 0 and "resuming" in done.stdout and not failures
    return {"case": f"train killed {kills} times at staggered moments, resumed each time", "exit": done.returncode,
            "message": (failures or [line for line in done.stdout.splitlines() if "resuming" in line]
                        or ["no resume"])[0],
            "seconds": time.perf_counter() - start, "left": ", ".join(sorted(p.name for p in folder.iterdir())),
            "unchanged": True, "ok": ok and resumed >= kills - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="maediff-hostile-"))
    prepare_training_data(work)
    rows = []
    for case in [*cases(work, inputs(work), models(work)), *training_cases(work)]:
        rows.append(run(case))
        print(f"{rows[-1]['case']}: {'ok' if rows[-1]['ok'] else 'FAIL'}", file=sys.stderr, flush=True)
    rows.append(killed_training(work))
    print("| case | exit | message (last line) | s | left in the output | inputs unchanged | verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        message = r["message"].replace("|", "/").replace(str(work), "W")
        print(f"| {r['case']} | {r['exit']} | {message} | {r['seconds']:.1f} | {r['left']} | "
              f"{'yes' if r['unchanged'] else 'NO'} | {'ok' if r['ok'] else 'FAIL'} |")
    failed = sum(not r["ok"] for r in rows)
    print(f"\n{len(rows)} cases, {failed} failed; pickle payload ran: {(work / 'pickle-ran').exists()}; "
          f"work folder {work}")


if __name__ == "__main__":
    main()
