"""Where a model's residual separates lesions from normal tissue, noise level by noise level.

For each model and each t_test level: the mean residual |x - x_rec| inside the lesions and in the
rest of the brain of tumour test volumes, their ratio, the voxel AUPRC of the post-processed score
in the brain, and the healthy l1 (brain) of healthy test volumes. A model conditioned on the clean
slice (cDDPM) is also run with each slice's condition taken from a healthy volume (same slice of
the atlas-space grid): if its reconstruction inside the lesions moves towards healthy tissue, the
condition carried the lesion into the reconstruction. ``--figure`` draws the first tumour test
volume's slice of largest lesion area: the input, then each row's reconstruction and residual per level.

    python scripts/residual_contrast.py --model runs/cddpm/best.json Resources/models/maediff-small-demo.json \
        --tumour benchmark/prepared/tumour --healthy benchmark/prepared/healthy --levels 150 250 500 750 \
        --figure residuals.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from maediff_core.cache import load_prepared, select, split_of
from maediff_core.detect import DetectConfig, anomaly_score, reconstruct
from maediff_core.modelfile import load_model
from maediff_core.torch_runtime import TorchRuntime


class HealthyCondition(torch.nn.Module):
    """A conditioned network whose condition for each slice of ``image`` is that slice of ``healthy``
    (both (Z, H, W) in 0..1, on one grid): the slice is recognised among ``image``'s by its values."""

    def __init__(self, network: torch.nn.Module, image: np.ndarray, healthy: np.ndarray):
        super().__init__()
        self.network = network
        self.image = torch.from_numpy(image * 2.0 - 1.0).float().flatten(1)
        self.healthy = torch.from_numpy(healthy * 2.0 - 1.0).float().unsqueeze(1)

    def forward(self, x, t, clean):
        index = torch.cdist(clean.flatten(1).cpu(), self.image).argmin(1)
        return self.network(x, t, clean=self.healthy[index].to(clean.device))


def level_row(model, card, tumours, healthy, level: int, stride: int | None, swap: bool) -> tuple[dict, np.ndarray]:
    """The row of one level and condition, and the reconstruction of the first tumour volume."""
    config = DetectConfig(t_test=(level,), stride=stride)
    inside, outside, scores, truths, moved, first = [], [], [], [], [], None
    for case, normal in zip(tumours, healthy, strict=False):
        network = HealthyCondition(model, case.image, normal.image) if swap else model
        rec = reconstruct(TorchRuntime(network, card), card, case.image, case.mask, config)
        first = rec if first is None else first
        residual = np.abs(case.image - rec)
        lesion, brain = case.seg > 0, case.mask > 0
        inside.append(residual[lesion].mean())
        outside.append(residual[brain & ~lesion].mean())
        scores.append(anomaly_score(case.image, rec, case.mask)[brain])
        truths.append(lesion[brain])
        if swap:
            own = reconstruct(TorchRuntime(model, card), card, case.image, case.mask, config)
            moved.append(np.abs(rec - own)[lesion].mean())
    row = {"level": level, "condition": "healthy slice" if swap else "own slice",
           "lesion_residual": float(np.mean(inside)), "brain_residual": float(np.mean(outside)),
           "ratio": float(np.mean(inside) / np.mean(outside)),
           "voxel_auprc": float(average_precision_score(np.concatenate(truths), np.concatenate(scores)))}
    if swap:
        row["lesion_change"] = float(np.mean(moved))
    else:
        runtime = TorchRuntime(model, card)
        errors = [np.abs(c.image - reconstruct(runtime, card, c.image, c.mask, config))[c.mask > 0].mean()
                  for c in healthy]
        row["healthy_l1"] = float(np.mean(errors))
    return row, first


def figure(case, panels: dict[str, list[tuple[int, np.ndarray]]], out: str) -> None:
    """One row a model and condition: the input with the lesion outlined, then the reconstruction
    and |residual| at each level, on the slice of largest lesion area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax(case.seg.reshape(len(case.seg), -1).sum(1)))
    columns = 1 + 2 * max(len(p) for p in panels.values())
    fig, axes = plt.subplots(len(panels), columns, figsize=(1.6 * columns, 1.7 * len(panels)), squeeze=False)
    for axis_row, (label, recs) in zip(axes, panels.items(), strict=True):
        axis_row[0].imshow(case.image[z], cmap="gray", vmin=0, vmax=1)
        axis_row[0].contour(case.seg[z] > 0, levels=[0.5], colors="r", linewidths=0.6)
        axis_row[0].set_title(label, fontsize=6, loc="left")
        for k, (level, rec) in enumerate(recs):
            axis_row[1 + 2 * k].imshow(rec[z], cmap="gray", vmin=0, vmax=1)
            axis_row[1 + 2 * k].set_title(f"t {level}", fontsize=6)
            residual = np.abs(case.image[z] - rec[z]) * (case.mask[z] > 0)  # the score is the brain's
            axis_row[2 + 2 * k].imshow(residual, cmap="inferno", vmin=0, vmax=0.5)
            axis_row[2 + 2 * k].set_title(f"|residual| t {level}", fontsize=6)
    for axis in axes.ravel():
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True)
    parser.add_argument("--tumour", required=True, help="prepared tumour set (its test split is used)")
    parser.add_argument("--healthy", required=True, help="prepared healthy set (its test split is used)")
    parser.add_argument("--levels", type=int, nargs="+", default=[150, 250, 500, 750])
    parser.add_argument("--volumes", type=int, default=4, help="tumour and healthy test volumes each")
    parser.add_argument("--stride", type=int, help="patch stride (default: each model's)")
    parser.add_argument("-o", "--output", help="JSON of every row")
    parser.add_argument("--figure", help="PNG of the first tumour test volume's reconstructions")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    tumours = load_prepared(args.tumour, select(split_of(args.tumour), "test"))[:args.volumes]
    healthy = load_prepared(args.healthy, select(split_of(args.healthy), "test"))[:args.volumes]
    rows, panels = [], {}
    print("| model | t | condition | lesion residual | brain residual | ratio | voxel AUPRC | healthy l1 "
          "| lesion change |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.model:
        model, card = load_model(path)
        for level in args.levels:
            for swap in (False, True) if card.config.method == "cddpm" else (False,):
                row, rec = level_row(model, card, tumours, healthy, level, args.stride, swap)
                row = {"model": Path(path).stem, **row}
                rows.append(row)
                panels.setdefault(f"{card.config.name}, {row['condition']}", []).append((level, rec))
                print(f"| {card.config.name} | {level} | {row['condition']} | {row['lesion_residual']:.4f} | "
                      f"{row['brain_residual']:.4f} | {row['ratio']:.2f} | {100 * row['voxel_auprc']:.1f} | "
                      f"{row.get('healthy_l1', float('nan')):.4f} | {row.get('lesion_change', float('nan')):.4f} |",
                      flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1) + "\n")
    if args.figure:
        figure(tumours[0], panels, args.figure)


if __name__ == "__main__":
    main()
