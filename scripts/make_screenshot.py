"""Resources/Screenshots/overlay.png: the demo result (``make demo``) as the Slicer module shows it,
a heatmap overlay on the input at the largest lesion, rendered by the module's own scene code.

Usage: python scripts/make_screenshot.py [DEMO_OUTPUT] [PNG]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MAEDiffAnomaly"))

import slicer  # noqa: E402

from maediff_core.files import case_name  # noqa: E402
from maediff_core.resources import sample_paths  # noqa: E402
from MAEDiffAnomalyLib import scene as scene_lib  # noqa: E402


def main(demo_output: Path, png: Path) -> Path:
    scene = scene_lib.headless_scene()
    sample = sample_paths()[0]
    node = scene_lib.read_volume_node(scene, sample, case_name(sample))
    node.CreateDefaultDisplayNodes()
    low, high = np.percentile(slicer.util.arrayFromVolume(node), (1, 99.5))  # as Slicer's auto window
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevelMinMax(low, high)
    results = scene_lib.load_results(scene, scene_lib.Placement.of(scene, node), demo_output / case_name(sample))
    ras = scene_lib.lesion_position(results, 0) if results.rows else None
    return scene_lib.render_slice(scene, results, png, ras=ras, size=512, opacity=0.6)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(main(Path(args[0] if args else "demo-output"),
               Path(args[1] if len(args) > 1 else ROOT / "Resources" / "Screenshots" / "overlay.png")))
