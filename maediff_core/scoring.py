"""Reconstructions -> the raw anomaly map of a volume, before post-processing (postprocess.py).

Three scorings, for every method: ``residual``, |x - x_rec| of one reconstruction (the papers');
``mean``, the residual to the mean of N reconstructions drawn with different noise; and ``mhd``, the
Mahalanobis distance of the input from the distribution of its N reconstructions (Behrendt et al.,
MICCAI 2024; docs/reference.md, "Mahalanobis scoring"). Where the reconstructions disagree with each
other (CSF borders, cortex) the distance shrinks; a lesion that no reconstruction reproduces stays far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORINGS = ("residual", "mean", "mhd")


@dataclass(frozen=True)
class ScoringConfig:
    name: str = "residual"  # one of SCORINGS
    samples: int = 1  # N reconstructions (Behrendt et al.: 10)
    regulariser: float = 1e-2  # added to the covariance's diagonal (Behrendt et al.: mh_regu 1e-2)
    normalise: bool = True  # mhd: each volume's map scaled to a maximum of 1, as Behrendt et al.

    def __post_init__(self) -> None:
        if self.name not in SCORINGS:
            raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {self.name!r}")
        if self.samples < 1 or (self.name == "residual") != (self.samples == 1):
            takes = "one reconstruction" if self.name == "residual" else "two or more"
            raise ValueError(f"scoring {self.name} takes {takes} (samples), got {self.samples}")
        if not (np.isfinite(self.regulariser) and self.regulariser > 0):
            raise ValueError(f"the regulariser must be a finite number > 0, got {self.regulariser}")

    @property
    def label(self) -> str:
        """``residual``, ``mean:4``, ``mhd:10`` (``mhd:10:raw`` without normalisation): how the
        command line names it."""
        if self.name == "residual":
            return "residual"
        return f"{self.name}:{self.samples}" + ("" if self.normalise or self.name != "mhd" else ":raw")

    @classmethod
    def from_label(cls, text: str) -> ScoringConfig:
        name, *rest = text.split(":")
        raw = rest[-1:] == ["raw"]
        count = rest[:-1] if raw else rest
        if len(count) > 1 or (raw and name != "mhd"):
            raise ValueError(f"a scoring is residual, mean:N or mhd:N[:raw], got {text!r}")
        samples = int(count[0]) if count else (1 if name == "residual" else 10)
        return cls(name, samples, normalise=not raw)


def score_map(image: np.ndarray, samples: np.ndarray, mask: np.ndarray, config: ScoringConfig) -> np.ndarray:
    """The raw anomaly map (z, y, x) of ``image`` (0..1) from its reconstructions ``samples`` (N, z,
    y, x; the first ``config.samples`` are used) inside the brain ``mask``."""
    if len(samples) < config.samples:
        raise ValueError(f"scoring {config.label} needs {config.samples} reconstructions, got {len(samples)}")
    samples = samples[:config.samples]
    if config.name == "residual":
        return np.abs(image - samples[0])
    if config.name == "mean":
        return np.abs(image - samples.mean(0))
    return mahalanobis_map(image, samples, mask, config.regulariser, config.normalise)


def mahalanobis_map(image: np.ndarray, samples: np.ndarray, mask: np.ndarray, regulariser: float,
                    normalise: bool = True) -> np.ndarray:
    """Per axial slice, over its brain pixels: the distance of the input from the distribution of its
    reconstructions (full covariance of the slice's brain pixels, regularised); 0 outside the brain."""
    out = np.zeros(image.shape, np.float32)
    for z in range(image.shape[0]):
        inside = mask[z].astype(bool)
        if inside.any():
            out[z][inside] = mahalanobis_distance(image[z][inside], samples[:, z][:, inside], regulariser)
    if normalise and out.max() > 0:  # Behrendt et al.: min-max per volume (its minimum is 0)
        out /= out.max()
    return out


def mahalanobis_distance(x: np.ndarray, samples: np.ndarray, regulariser: float) -> np.ndarray:
    """sqrt(d_i (C^-1 d)_i) per pixel i, d = x - mean of ``samples`` (N, P), C = U^T U / (N - 1) +
    regulariser I with U the centred samples: Behrendt et al.'s element-wise distance, NaN (a negative
    product) as 0.

    C is P x P (thousands of pixels) but of rank N plus the regulariser: by the Woodbury identity,
    C^-1 d = (d - V^T (lambda I_N + V V^T)^-1 V d) / lambda with V = U / sqrt(N - 1), exactly, from an
    N x N system."""
    samples = samples.astype(np.float64)
    mean = samples.mean(0)
    d = x.astype(np.float64) - mean
    v = (samples - mean) / np.sqrt(max(len(samples) - 1, 1))
    small = regulariser * np.eye(len(samples)) + v @ v.T
    solved = (d - v.T @ np.linalg.solve(small, v @ d)) / regulariser
    return np.sqrt(np.clip(d * solved, 0.0, None)).astype(np.float32)
