"""The table of docs/scoring.md from a `maediff evaluate --scoring ...` run: every scoring at the
protocol's and at the reading operating point, from the run's metrics.json.

Usage: python scripts/scoring_table.py EVAL_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(label: str, r: dict, chosen: str) -> str:
    protocol, reading = r["false_alarms"]["protocol"], r["false_alarms"].get("reading", {})
    point = r.get("reading", {})

    def alarms(f: dict) -> str:
        if "healthy_candidates_mean" not in f:
            return "-"
        return f"{f['healthy_candidates_mean']:.1f} (max {f['healthy_candidates_max']}, {f['healthy_ml_mean']:.1f} mL)"

    name = f"**{label}**" if label == chosen else label
    auroc = "-" if r.get("case_auroc") is None else f"{r['case_auroc']:.3f}"  # none without healthy volumes
    return (f"| {name} | {100 * r['val_dice_pooled']:.1f} | {100 * r['dice_mean']:.1f} +- {100 * r['dice_std']:.1f} | "
            f"{100 * r['auprc_mean']:.1f} +- {100 * r['auprc_std']:.1f} | {auroc} | "
            f"{alarms(protocol)} | {protocol['lesion_volume_false_candidates_mean']:.1f} | "
            + (f"{point['threshold']:.4f}, >= {point['min_voxels']} voxels | "
               f"{100 * point['dice_mean']:.1f} +- {100 * point['dice_std']:.1f} | {alarms(reading)} | "
               f"{reading['lesion_volume_false_candidates_mean']:.1f} |" if point else "- | - | - | - |"))


def main() -> None:
    result = json.loads((Path(sys.argv[1]) / "metrics.json").read_text())
    scorings = result.get("scorings") or {result["scoring"]: result}
    print("| scoring | val Dice (pooled) | test Dice | test AUPRC | case AUROC | candidates per healthy test "
          "volume | false candidates per lesion volume | reading point | Dice | candidates per healthy test volume "
          "| false candidates per lesion volume |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in scorings.items():
        print(row(label, r, result["scoring"]))
    print(f"\n{result['n_val']} validation and {result['n_test']} test lesion volumes, {result['n_healthy']} healthy "
          f"test and {result['n_healthy_val']} healthy validation volumes; {result['protocol']} protocol. Bold: the "
          "scoring chosen by validation Dice. Columns 2 to 7 at the protocol's threshold (chosen for Dice on the "
          "validation volumes), 8 to 11 at the reading point (chosen on the healthy validation volumes).")


if __name__ == "__main__":
    main()
