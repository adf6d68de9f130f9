"""Build the Slicer module folder with the core vendored into it: ``DIST/MAEDiffAnomaly/`` (the
folder a user adds under Edit > Application Settings > Modules > Additional module paths) and
``DIST/MAEDiffAnomaly.zip``.

The folder has the layout of an installed extension's scripted-modules folder, which
``MAEDiffAnomaly/CMakeLists.txt`` produces for the Extensions Index from the same file sets
(``Testing/test_slicer_module.py`` checks that they agree): the module, ``maediff_core/`` beside it,
and the core's ``Resources/`` (atlas, demo model, sample) merged with the module's own.

Usage: python scripts/build_slicer_module.py [DIST]   (standard library only)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "MAEDiffAnomaly"
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


def build(dist: Path) -> Path:
    """Write ``dist/MAEDiffAnomaly/`` (replacing it whole) and its zip; returns the zip."""
    dist.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=dist))
    staging.chmod(0o755)  # a module folder others may read, not mkdtemp's 0700
    try:
        for relative, source in module_files().items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            target.chmod(0o644)
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
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"))
