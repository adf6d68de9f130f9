"""Data sets on disk: discovery of the public layouts, subject-disjoint splits, and the
model-space cache that training and evaluation read (``maediff prepare``).

Layouts recognised (a folder may hold one of them):
- IXI:      ``IXI002-Guys-0828-T2.nii.gz`` in one flat folder (healthy).
- BraTS21:  ``BraTS2021_00000/BraTS2021_00000_t2.nii.gz`` with ``..._seg.nii.gz``.
- MSLUB:    ``patient01/[raw/]...T2W.nii.gz`` with ``...consensus_gt.nii.gz``.
- phantoms: ``PHH001-T2.nii.gz`` (healthy, flat) or ``PHT001/PHT001_t2.nii.gz`` with ``_seg``.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .atlas import Atlas
from .cache import write_split_csv
from .errors import InputError
from .files import write_text_atomic
from .input_check import tissue_contrast
from .preprocess import PreprocessConfig, preprocess, to_model
from .volume_io import image_from_array, read_volume, write_volume

PATTERNS = {
    # layout: (image glob, regex giving the subject id from the file name, segmentation globs)
    "ixi": ("IXI*-T2.nii.gz", r"^(IXI\d+)", ()),
    "brats21": ("BraTS2021_*/*_t2.nii.gz", r"^(BraTS2021_\d+)", ("*_seg.nii.gz",)),
    "mslub": ("**/*T2W*.nii.gz", None, ("*consensus_gt*.nii.gz", "*gt*.nii.gz")),
    "phantom-healthy": ("PH?[0-9][0-9][0-9]-T2.nii.gz", r"^(PH.\d+)", ()),
    "phantom-lesion": ("PH?[0-9][0-9][0-9]/*_t2.nii.gz", r"^(PH.\d+)", ("*_seg.nii.gz",)),
}


@dataclass(frozen=True)
class Case:
    name: str  # unique within the data set, used as the folder name in the cache
    subject: str  # subjects never straddle two splits
    image: Path
    seg: Path | None
    layout: str


def discover(root: str | Path) -> list[Case]:
    """All cases under ``root`` in the first layout that matches, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    for layout, (pattern, subject_re, seg_patterns) in PATTERNS.items():
        images = sorted(p for p in root.glob(pattern) if p.is_file())
        if not images:
            continue
        cases = []
        for image in images:
            if layout == "mslub":
                # patient01/raw/patient01_T2W.nii.gz or patient01/T2W.nii.gz: the patient folder
                # is the first level below the root.
                subject = image.relative_to(root).parts[0]
                name = subject
            else:
                name = image.name.split(".nii")[0].removesuffix("-T2").removesuffix("_t2")
                match = re.match(subject_re, image.name)
                subject = match.group(1) if match else name
            seg = next((s for p in seg_patterns for s in sorted(image.parent.glob(p))), None)
            if seg_patterns and seg is None:
                raise InputError(f"{image}: no segmentation ({' or '.join(seg_patterns)}) beside it")
            cases.append(Case(name, subject, image, seg, layout))
        names = [c.name for c in cases]
        if len(set(names)) != len(names):
            raise InputError(f"{root}: case names repeat in the {layout} layout")
        return cases
    raise InputError(
        f"{root}: no T2 volumes found in a known layout (IXI *-T2.nii.gz, BraTS2021_*/..._t2.nii.gz,"
        " MSLUB .../*T2W*.nii.gz, phantoms)"
    )


def make_split(cases: list[Case], test_fraction: float = 0.0, val_fraction: float = 0.0,
               folds: int = 0, seed: int = 0, rest: str = "train") -> list[dict]:
    """Assign subjects (not files) to test / val / ``rest``, with folds of the rest if asked.

    Healthy cohorts use the reference shape: a test set (158 of 560 IXI subjects, about 28 %) and
    5 folds of the rest; lesion sets use a validation part (BraTS21 100 of 1251, MSLUB 10 of 30)
    for the threshold, and ``rest="test"``.
    """
    subjects = sorted({c.subject for c in cases})
    order = np.random.default_rng(seed).permutation(len(subjects))
    n_test = int(round(test_fraction * len(subjects)))
    n_val = int(round(val_fraction * len(subjects)))
    assignment = {}
    for rank, index in enumerate(order):
        subject = subjects[index]
        if rank < n_test:
            assignment[subject] = ("test", -1)
        elif rank < n_test + n_val:
            assignment[subject] = ("val", -1)
        else:
            assignment[subject] = (rest, (rank - n_test - n_val) % folds if folds else -1)
    return [{"case": c.name, "subject": c.subject, "split": assignment[c.subject][0],
             "fold": assignment[c.subject][1]} for c in cases]


# ----------------------------------------------------------------------------------------------
# Filling the model-space cache

def prepare_case(case: Case, out_dir: Path, config: PreprocessConfig) -> str:
    """Preprocess one case into ``out_dir/<name>/``; ``record.json`` is written last and marks it done."""
    target = out_dir / case.name
    result = preprocess(read_volume(case.image), config)
    if case.seg is not None:
        seg = to_model(read_volume_labels(case.seg), result.record, labels=True)
        write_volume(image_from_array((seg > 0).astype(np.uint8), result.record["model_grid"]), target / "seg.nii.gz")
    # The training volumes' contrasts become the model card's range (ModelCard.inputs, input_check.py).
    contrast = tissue_contrast(result, Atlas.load(config.atlas))
    result.save(target, {"input": str(case.image), "seg": str(case.seg) if case.seg else None,
                         "subject": case.subject, "layout": case.layout,
                         "contrast": contrast and contrast.to_dict()})
    return case.name


def read_volume_labels(path: Path) -> sitk.Image:
    """A label volume: read like any volume, but an all-zero (lesion-free) map is allowed."""
    try:
        return read_volume(path)
    except InputError as err:
        if "same value 0" not in str(err):
            raise
        return sitk.ReadImage(str(path))


def prepare_dataset(dataset_dir: str | Path, out_dir: str | Path, config: PreprocessConfig | None = None,
                    workers: int = 2, split_kind: str = "auto", seed: int = 0) -> dict:
    """Preprocess every case of a data set into the cache; resumable, failures reported and skipped.

    Writes ``split.csv`` (subject-disjoint) beside the cases and ``failures.csv`` if any case failed.
    """
    config = config or PreprocessConfig()
    out_dir = Path(out_dir)
    cases = discover(dataset_dir)
    todo = [c for c in cases if not (out_dir / c.name / "record.json").is_file()]
    failures: list[tuple[str, str]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(workers, 1)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, initializer=_limit_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(prepare_case, c, out_dir, config): c for c in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc="prepare", unit="case"):
            try:
                future.result()
            except Exception as err:  # one bad case must not stop the others
                failures.append((futures[future].name, f"{type(err).__name__}: {err}"))
                tqdm.write(f"FAILED {futures[future].name}: {err}")
    if failures:
        text = "case,error\n" + "".join(f"{n},\"{e.replace(chr(34), chr(39))}\"\n" for n, e in failures)
        write_text_atomic(text, out_dir / "failures.csv")
    done = [c for c in cases if (out_dir / c.name / "record.json").is_file()]
    if split_kind == "auto":
        split_kind = "lesion" if any(c.seg is not None for c in cases) else "healthy"
    split_path = out_dir / "split.csv"
    if not split_path.is_file() and done:
        if split_kind == "healthy":
            rows = make_split(done, test_fraction=0.28, folds=5, seed=seed)  # IXI 158/560, 5 folds
        else:
            rows = make_split(done, val_fraction=0.2 if len(done) < 100 else 0.08, seed=seed, rest="test")
        write_split_csv(rows, split_path)
    summary = {"cases": len(cases), "prepared": len(done), "skipped_already_done": len(cases) - len(todo),
               "failed": [name for name, _ in failures], "config": asdict(config)}
    write_text_atomic(json.dumps(summary, indent=1) + "\n", out_dir / "prepare.json")
    return summary


def _limit_threads(threads: int) -> None:
    # ITK threads of parallel workers must share the cores: oversubscription made it 3x slower.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


