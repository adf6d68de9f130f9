"""The bundled demo model: it loads into its configuration, fits the size limit, reconstructs a
model-space slice, and its cards say what it is."""

from __future__ import annotations

import numpy as np

from maediff_core.detect import reconstruct
from maediff_core.modelfile import load_model, model_paths
from maediff_core.resources import default_model_path
from maediff_core.runtime import OnnxRuntime, exported
from maediff_core.torch_runtime import TorchRuntime


def test_bundled_demo_model_loads_and_its_card_is_honest():
    path = default_model_path()
    weights, meta = model_paths(path)
    model, card = load_model(path)  # strict: every tensor fits the configuration
    # Its weights for torch and its network for ONNX Runtime, within the bundle's 25 MB.
    onnx = exported(card)  # each file verified against the card's hash
    assert set(onnx) == {"denoiser"} and card.onnx["denoiser"]["parity"] <= 1e-4
    assert weights.stat().st_size + sum(p.stat().st_size for p in onnx.values()) <= 25e6
    assert card.config.name == "maediff-small" and card.config.mae is not None
    assert card.threshold is not None and 0.0 < card.threshold < 1.0
    assert card.training["synthetic_data"] is True and card.training["weights_dtype"] == "float16"
    assert card.intended_use.startswith("Demonstration and testing of the software only")
    assert card.training["data"].startswith("100 healthy")
    markdown = meta.with_suffix(".md").read_text()
    assert "not a medical device" in markdown and "maediff prepare /data/IXI-T2" in markdown

    # A model-space slice of a uniform disc (brain-like grey on black): the trained model must give
    # back about its intensity inside and black outside.
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 35**2
    image = 0.5 * disc[None].astype(np.float32)
    on_torch = TorchRuntime(model, card)
    rec = reconstruct(on_torch, card, image, disc[None])
    assert rec.shape == image.shape and np.isfinite(rec).all()
    assert abs(rec[0][disc].mean() - 0.5) < 0.1 and rec[0][~disc].mean() < 0.1
    # Its ONNX file on ONNX Runtime reconstructs as torch does: both draw the same noise from a seed.
    np.testing.assert_allclose(reconstruct(OnnxRuntime(card), card, image, disc[None]), rec, rtol=0, atol=1e-4)
