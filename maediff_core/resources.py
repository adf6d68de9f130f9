"""Where the bundled files live: ``Resources/`` beside the ``maediff_core`` folder, both in a
clone of the repository and in the Slicer module folder the core is vendored into.

Standard library only: the Slicer module asks for these paths in Slicer's own process.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_NAME = "MAEDiffT2Sample"  # a tumour phantom in an oblique, anisotropic scan (maediff demo)


def resources_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "Resources"


def default_model_path() -> Path:
    """The bundled demo model's card."""
    return resources_dir() / "models" / "maediff-small-demo.json"


def sample_paths() -> tuple[Path, Path]:
    """The bundled sample T2 volume and its known lesion."""
    folder = resources_dir() / "samples"
    return folder / f"{SAMPLE_NAME}.nii.gz", folder / f"{SAMPLE_NAME}-lesion.nii.gz"
