"""Draw the module and extension icons (128 x 128 PNG) from the bundled atlas: an axial slice of
the template with a heat-coloured anomaly blob.

    python scripts/make_icons.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    t1 = sitk.DICOMOrient(sitk.ReadImage(str(ROOT / "Resources/atlas/mni152_2009a_t1.nii.gz")), "LPS")
    brain = sitk.GetArrayFromImage(t1)[95].astype(float)
    yy, xx = np.mgrid[: brain.shape[0], : brain.shape[1]]
    blob = np.exp(-(((yy - 70) / 14.0) ** 2 + ((xx - 125) / 12.0) ** 2))
    heat = np.ma.masked_less(blob * (brain > 20), 0.15)
    for target in (ROOT / "Resources/MAEDiffAnomaly.png", ROOT / "MAEDiffAnomaly/Resources/Icons/MAEDiffAnomaly.png"):
        fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
        ax = fig.add_axes([0, 0, 1, 1])
        ax.imshow(brain, cmap="gray")
        ax.imshow(heat, cmap="hot", vmin=0, vmax=1.1, alpha=0.85)
        ax.axis("off")
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=100, facecolor="black")
        plt.close(fig)
        print(target)


if __name__ == "__main__":
    main()
