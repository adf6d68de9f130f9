"""What the core needs inside Slicer, and how it may be installed there.

torch comes from Slicer's PyTorch extension (the right CUDA build for the user's GPU); the other
packages from pip after the user agreed. SimpleITK and numpy are never installed or upgraded:
Slicer ships its own, and replacing them breaks Slicer's image I/O.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
from pathlib import Path

# import name -> pip requirement. Installed with --no-deps where a package would drag in torch or
# numpy; their remaining needs are listed here explicitly.
PIP_PACKAGES = {
    "monai": "monai>=1.3",
    "einops": "einops>=0.7",
    "safetensors": "safetensors>=0.4",
    "highdicom": "highdicom>=0.22",  # DICOM SEG export
}
NO_DEPS = {"monai"}
NEVER_INSTALL = ("SimpleITK", "numpy")


def missing_packages() -> list[str]:
    """Import names of the packages the detector needs and this Python lacks (torch excluded)."""
    return [name for name in PIP_PACKAGES if importlib.util.find_spec(name) is None]


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def pip_arguments(names: list[str]) -> list[str]:
    """Argument lists for ``slicer.util.pip_install``, with numpy pinned to the installed version."""
    for name in names:
        if name in NEVER_INSTALL or name not in PIP_PACKAGES:
            raise ValueError(f"{name} must not be installed by this module")
    constraints = Path(tempfile.mkdtemp(prefix="maediff-pip-")) / "constraints.txt"
    constraints.write_text(f"numpy=={importlib.metadata.version('numpy')}\n")
    plain = [PIP_PACKAGES[n] for n in names if n not in NO_DEPS]
    no_deps = [PIP_PACKAGES[n] for n in names if n in NO_DEPS]
    commands = []
    if plain:
        commands.append([*plain, "-c", str(constraints)])
    if no_deps:
        commands.append([*no_deps, "--no-deps", "-c", str(constraints)])
    return commands
