"""Build the Slicer module folder with the core vendored into it: ``DIST/MAEDiffAnomaly/`` (the
folder a user adds under Edit > Application Settings > Modules > Additional module paths) and
``DIST/MAEDiffAnomaly.zip``.

The folder has the layout of an installed extension's scripted-modules folder, which
``MAEDiffAnomaly/CMakeLists.txt`` produces for the Extensions Index from the same file sets
(``Testing/test_slicer_module.py`` checks that they agree): the module, ``maediff_core/`` beside it,
and the core's ``Resources/`` (atlas, demo model, sample) merged with the module's own.

With ``--wheels``, the module also carries a ``wheels/`` folder: the wheels of what its first Detect
installs (ONNX Runtime and what it needs that Slicer lacks), from which it then installs with no
network (``MAEDiffAnomalyLib/dependencies.py``). ``--wheels slicer``: for Slicer's Python on Windows
x86-64, macOS arm64 and x86-64, and Linux x86-64 (``make slicer-module-offline``); ``--wheels here``:
for the Python running this script (the tests).

Usage: python scripts/build_slicer_module.py [DIST] [--wheels slicer|here]   (standard library and pip)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MAEDiffAnomaly"))
from MAEDiffAnomalyLib.dependencies import GROUPS, PROVIDED  # noqa: E402 - the module's own install lists

NAME = "MAEDiffAnomaly"
# Slicer 5.10 and 5.12 run Python 3.12 (../README.md, "Supported releases"); pip's platform tags of the
# systems Slicer is released for. ONNX Runtime's macOS wheels need macOS 13 or newer.
SLICER_PYTHON = "3.12"
SLICER_PLATFORMS = ("win_amd64", "macosx_14_0_arm64", "macosx_14_0_x86_64", "manylinux_2_28_x86_64")
OFFLINE_GROUP = "onnx"  # what the first Detect installs
# (folder in the repository, files in it, recursively; their folder in the module, subfolders kept)
PARTS = (
    ("MAEDiffAnomaly", "MAEDiffAnomaly.py", "."),
    ("MAEDiffAnomaly/MAEDiffAnomalyLib", "*.py", "MAEDiffAnomalyLib"),
    ("MAEDiffAnomaly/Resources/Icons", "*.png", "Resources/Icons"),
    ("MAEDiffAnomaly/Resources/UI", "*.ui", "Resources/UI"),
    ("maediff_core", "*.py", "maediff_core"),
    ("Resources/atlas", "*", "Resources/atlas"),
    ("Resources/models", "*", "Resources/models"),
    ("Resources/samples", "*", "Resources/samples"),
)


def module_files() -> dict[str, Path]:
    """Path in the module folder -> source file."""
    files = {}
    for source_folder, pattern, folder in PARTS:
        sources = sorted(p for p in (ROOT / source_folder).rglob(pattern)
                         if p.is_file() and "__pycache__" not in p.parts)
        if not sources:
            raise FileNotFoundError(f"nothing matches {source_folder}/**/{pattern}")
        for source in sources:
            files[str(Path(folder) / source.relative_to(ROOT / source_folder))] = source
    return files


def download_wheels(folder: Path, targets: str) -> None:
    """The wheels of the first Detect's install into ``folder``, for ``targets`` ("slicer" or "here"),
    less those of packages Slicer ships (its numpy stays)."""
    requirements = list(GROUPS[OFFLINE_GROUP].values())
    platforms = [["--python-version", SLICER_PYTHON, "--implementation", "cp",
                  "--abi", f"cp{SLICER_PYTHON.replace('.', '')}", "--platform", platform]
                 for platform in SLICER_PLATFORMS] if targets == "slicer" else [[]]
    for platform in platforms:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest",
                        str(folder), *platform, *requirements], check=True)
    provided = {name.lower() for name in PROVIDED}
    for wheel in folder.glob("*.whl"):
        if wheel.name.split("-")[0].lower() in provided:
            wheel.unlink()


def build(dist: Path, wheels: str | None = None) -> Path:
    """Write ``dist/MAEDiffAnomaly/`` (replacing it whole) and its zip, with ``wheels`` ("slicer",
    "here" or None); returns the zip."""
    dist.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=dist))
    staging.chmod(0o755)  # a module folder others may read, not mkdtemp's 0700
    try:
        for relative, source in module_files().items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            target.chmod(0o644)
        if wheels:
            download_wheels(staging / "wheels", wheels)
        archive = dist / f".{NAME}.zip.partial"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    zipped.write(path, Path(NAME) / path.relative_to(staging))
        final = dist / NAME
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        archive.replace(dist / f"{NAME}.zip")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dist / f"{NAME}.zip"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist", nargs="?", type=Path, default=ROOT / "dist")
    parser.add_argument("--wheels", choices=("slicer", "here"), help="carry the first Detect's wheels (offline)")
    arguments = parser.parse_args()
    print(build(arguments.dist, arguments.wheels))
