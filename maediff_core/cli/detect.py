"""``maediff detect``: the main job, and the one the Slicer module runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from ..errors import InputError, OptionError
from ..files import output_folders
from ..preprocess_config import MASK_METHODS
from ..runtime import RUNTIMES
from .options import DEVICES, positive_int, scoring_label, t_test_levels


def add_detect(sub) -> None:
    p = sub.add_parser("detect", help="anomaly heatmap, healthy reconstruction and lesions of T2 volumes")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", help="one subfolder per input")
    p.add_argument("--check", action="store_true",
                   help="only screen the inputs (readable, voxel size, tissue contrast; about 3 s each on 2 "
                        "cores): one line each, exit code 2 if detection would refuse any")
    p.add_argument("--series", help="of a DICOM folder with several series: the one to read (its Series Instance "
                                    "UID or its description, as the refusal lists them)")
    p.add_argument("--force", action="store_true",
                   help="run on an input whose tissue contrast is not the model's (T1, FLAIR, PD) with a warning")
    p.add_argument("--model", help="model .json/.safetensors (default: the bundled demo model)")
    p.add_argument("--runtime", default="auto", choices=["auto", *RUNTIMES],
                   help="where the networks run: torch (CPU or CUDA) or onnx (ONNX Runtime on the CPU, the model's "
                        "exported files; needs no torch); auto: torch where it is installed, else onnx")
    p.add_argument("--device", default="auto", choices=DEVICES, help="torch's device")
    p.add_argument("--progress", default="text", choices=["text", "json"])
    p.add_argument("--operating-point", choices=["protocol", "reading"],
                   help="reading: the threshold and smallest lesion chosen on healthy validation volumes for few false "
                        "alarms; protocol: the threshold of the evaluation protocol, chosen for Dice on lesion "
                        "volumes (default: reading where the model card has it)")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the operating point's)")
    p.add_argument("--scoring", type=scoring_label,
                   help="residual, mean:N or mhd:N (N reconstructions; default: the model's); with another scoring "
                        "than the model's, pass --threshold")
    p.add_argument("--t-test", type=t_test_levels,
                   help="noise level of the reconstruction, or an ensemble averaged, e.g. 250,500,750 "
                        "(default: the model's)")
    p.add_argument("--stride", type=positive_int, help="patch stride (default: the model's)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-method", choices=MASK_METHODS)
    p.add_argument("--mask", help="brain mask on the input grid")
    p.add_argument("--no-register", action="store_true", help="input is already in atlas space")
    p.add_argument("--atlas", help="atlas folder (default: the one the model was trained with)")
    p.add_argument("--stop-with-parent", action="store_true",
                   help="exit when the starting process ends (for GUIs that launch through a launcher)")
    p.set_defaults(func=run_detect)


def run_detect(args: argparse.Namespace) -> None:
    # Before the heavy imports (torch takes seconds): a cancel in those seconds must stop this process too.
    if args.stop_with_parent:
        exit_when_orphaned()
    from ..detect import DetectConfig, detect_file, json_progress, preprocess_settings, text_progress
    from ..resources import default_model_path
    from ..runtime import load_runtime

    if args.check:
        return screen(args)
    if not args.output:
        raise OptionError("-o/--output is needed (or --check to screen the inputs only)")
    runtime, card = load_runtime(args.model or default_model_path(), args.runtime, args.device)
    prep = preprocess_settings(card, **preprocess_overrides(args))
    config = DetectConfig(t_test=args.t_test, stride=args.stride, batch_size=args.batch_size,
                          threshold=args.threshold, seed=args.seed, scoring=args.scoring,
                          operating_point=args.operating_point)
    progress = json_progress if args.progress == "json" else text_progress
    output_folders(args.inputs, args.output)
    for path in args.inputs:
        summary = detect_file(path, args.output, runtime, card, config, prep, args.mask, progress, args.force,
                              args.series)
        for warning in summary["warnings"]:
            print(f"warning: {path}: {warning}", file=sys.stderr, flush=True)
        if args.progress != "json":
            print(f"{path}: {summary['lesion_count']} lesion(s); "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in summary["timings_s"].items()))


def preprocess_overrides(args: argparse.Namespace) -> dict:
    return {"mask_method": args.mask_method or ("file" if args.mask else None),
            "register": False if args.no_register else None, "atlas": args.atlas}


def screen(args: argparse.Namespace) -> None:
    """``--check``: each input's screening, as a line of text or JSON; refused ones end in exit code 2."""
    from ..detect import preprocess_settings, screen_file
    from ..modelfile import load_card
    from ..resources import default_model_path

    card = load_card(args.model or default_model_path())
    prep = preprocess_settings(card, **preprocess_overrides(args))
    refused = []
    for path in args.inputs:
        result = screen_file(path, card, prep, args.mask, args.series)
        if args.progress == "json":
            print(json.dumps(result), flush=True)
        else:
            contrast = result.get("contrast") or {}
            measured = ", ".join(f"{k.upper().replace('_', '-')} {contrast[k]:.2f}"
                                 for k in ("csf_wm", "gm_wm", "csf_gm") if k in contrast)
            verdict = f"refused: {result['refused']}" if result["refused"] else "ok"
            print(f"{path}: {verdict}; voxels {' x '.join(f'{v:g}' for v in result['spacing_mm'])} mm"
                  + (f"; contrast {measured}" if measured else ""), flush=True)
            for warning in result["warnings"]:
                print(f"warning: {path}: {warning}", file=sys.stderr, flush=True)
        if result["refused"]:
            refused.append(str(path))
    if refused:
        raise InputError(f"{len(refused)} of {len(args.inputs)} input(s) would be refused: {', '.join(refused)}")


def exit_when_orphaned(interval_s: float = 0.5) -> None:
    """Exit as soon as the process that started this one is gone. A GUI that starts the detector
    through a launcher (Slicer's PythonSlicer starts the real Python as its child) can stop only
    the launcher; without this the detector would run on. POSIX only: on Windows the caller ends
    the whole process tree."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


COMMANDS = (add_detect,)
