"""PNG figures for people to look at: phantom montages and detection overviews."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def _radiological(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float]]:
    """Array (z, y, x) in LPS order, so that axial slices show anterior up and patient right on
    the viewer's left, plus the in-plane aspect (dy/dx) for display."""
    oriented = sitk.DICOMOrient(image, "LPS")
    spacing = oriented.GetSpacing()
    return sitk.GetArrayFromImage(oriented), (spacing[1], spacing[0])


def _save(fig, out: str | Path, dpi: int) -> Path:
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _axial_aspect(spacing_yx: tuple[float, float]) -> float:
    return spacing_yx[0] / spacing_yx[1]


def phantom_montage(cases: list[tuple[str, sitk.Image, sitk.Image | None]], out: str | Path,
                    columns: int = 4) -> Path:
    """One axial slice per case (through the lesion where there is one), lesion outlined."""
    rows = int(np.ceil(len(cases) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, image, seg) in zip(axes.ravel(), cases, strict=False):
        array, spacing = _radiological(image)
        labels = _radiological(seg)[0] if seg is not None else None
        if labels is not None and labels.any():
            z = int(np.argmax((labels > 0).sum(axis=(1, 2))))
        else:
            z = array.shape[0] // 2
        ax.imshow(array[z], cmap="gray", aspect=_axial_aspect(spacing),
                  vmin=0, vmax=np.percentile(array, 99.5))
        if labels is not None and labels[z].any():
            ax.contour(labels[z] > 0, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{name} z={z}", fontsize=9)
    return _save(fig, out, dpi=90)


def detection_figure(image: sitk.Image, reconstruction: sitk.Image, heatmap: sitk.Image, lesions: sitk.Image,
                     truth: sitk.Image | None, out: str | Path, rows: int = 3) -> Path:
    """Input, reconstruction, heatmap overlay and lesions on ``rows`` axial slices of the input grid.

    Slices go through the largest truth (or, without truth, detected) lesion area; detected
    lesions are outlined in red and the truth in green.
    """
    array, spacing = _radiological(image)
    recon, heat, found = (_radiological(v)[0] for v in (reconstruction, heatmap, lesions))
    known = _radiological(truth)[0] > 0 if truth is not None else None
    focus = known if known is not None and known.any() else found > 0
    area = focus.reshape(focus.shape[0], -1).sum(1)
    first, last = (np.flatnonzero(area)[[0, -1]] if area.any() else (0, array.shape[0] - 1))
    picks = first + np.linspace(0.2, 0.8, rows) * (last - first)
    vmax = float(np.percentile(array, 99.5))
    heat_max = float(np.percentile(heat[heat > 0], 99.5)) if (heat > 0).any() else 1.0
    fig, axes = plt.subplots(rows, 4, figsize=(12.8, 3.3 * rows), squeeze=False)
    aspect = _axial_aspect(spacing)
    for row, z in zip(axes, np.round(picks).astype(int), strict=True):
        for ax, background in zip(row, (array, recon, array, array), strict=True):  # recon is in the input's units
            ax.axis("off")
            ax.imshow(background[z], cmap="gray", aspect=aspect, vmin=0, vmax=vmax)
        row[2].imshow(np.ma.masked_less_equal(heat[z], 0), cmap="inferno", alpha=0.6, aspect=aspect,
                      vmin=0, vmax=heat_max)
        if found[z].any():
            row[3].contour(found[z] > 0, levels=[0.5], colors="red", linewidths=0.9)
        if known is not None and known[z].any():
            row[3].contour(known[z], levels=[0.5], colors="lime", linewidths=0.9)
        titles = ("input", "reconstruction", "anomaly heatmap", "lesions (red) / truth (green)")
        for ax, title in zip(row, titles, strict=True):
            ax.set_title(f"{title}, z={z}", fontsize=9)
    return _save(fig, out, dpi=80)
