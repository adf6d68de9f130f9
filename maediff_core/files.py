"""Safe writes: what every stage needs, with no imaging library (the training path runs where
SimpleITK is not installed).

A file is written under a temporary name beside its final one and renamed when complete; a result
folder is written beside the old one and replaces it whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import OptionError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".nrrd", ".nhdr", ".mha", ".mhd")


def volume_suffix(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def case_name(path: str | Path) -> str:
    """File name without its volume suffix (``sub01.nii.gz`` -> ``sub01``)."""
    p = Path(path)
    suffix = volume_suffix(p)
    return p.name[: -len(suffix)] if suffix else p.name


def output_folders(inputs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """One result folder per input, named after its case. Inputs that share a case name (``a/T2.nii.gz``
    and ``b/T2.nii.gz``) would overwrite each other: refused before any work."""
    folders: dict[str, Path] = {}
    for path in inputs:
        name = case_name(path)
        if name in folders:
            raise OptionError(f"{folders[name]} and {path} would both write {Path(out_dir) / name}: "
                              "give them different -o folders")
        folders[name] = Path(path)
    return [Path(out_dir) / name for name in folders]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to. When the block ends without error the file gets
    the permissions the user's umask gives new files (mkstemp makes them 0600) and is renamed to
    ``path``; on any error it is removed, so nothing incomplete ever carries the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written (a file, read-only, no permission) before the
    minutes of work whose results it would receive."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OptionError(f"{folder}: cannot write results there ({err.strerror or err})") from None


@contextmanager
def folder_as_a_set(folder: Path) -> Iterator[Path]:
    """A temporary sibling folder to write a result into. When the block ends without error it
    replaces ``folder`` by renames, so a reader finds the old result or the new one, never a mix (a
    kill between the renames leaves only a hidden ``.old-`` copy). On error it is removed. Leftovers of
    killed runs are swept first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.parent.glob(f".{folder.name}.partial-*"), *folder.parent.glob(f".{folder.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        if folder.exists():
            os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except OSError:
            if old.exists():
                os.rename(old, folder)  # the earlier result back under its name
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file (JSON, CSV, Markdown) atomically; a short write raises (OSError)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return path
