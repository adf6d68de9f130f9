"""The ``maediff`` command line: the contract between the core and the Slicer module."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

from .files import VolumeError, check_writable, folder_as_a_set, output_folders


def given(args: argparse.Namespace, config_class) -> dict:
    """The options the user gave that ``config_class`` (a dataclass) has; the rest keep its defaults,
    so every default lives in one place."""
    from dataclasses import fields

    names = {f.name for f in fields(config_class)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names and v is not None}


def positive_int(text: str) -> int:
    value = int(text)  # argparse reports a ValueError as an invalid value
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value} (leave it out for the default)")
    return value


def t_test_levels(text: str) -> tuple[int, ...]:
    """``500`` or an ensemble ``250,500,750``."""
    return tuple(positive_int(part) for part in text.split(","))


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def cmd_preprocess(args: argparse.Namespace) -> None:
    from .atlas import Atlas
    from .preprocess import PreprocessConfig, preprocess_file

    config = PreprocessConfig(register=not args.no_register, mask_method=args.mask_method,
                              bias_correction=not args.no_n4, resample_1mm=not args.no_resample, atlas=args.atlas)
    folders = output_folders(args.inputs, args.output)
    check_writable(Path(args.output))
    atlas = Atlas.load(args.atlas)
    for path, folder in zip(args.inputs, folders):
        start = time.perf_counter()
        result = preprocess_file(path, config, atlas, args.mask)
        with folder_as_a_set(folder) as out:
            result.save(out)
        print(f"{path} -> {folder} ({time.perf_counter() - start:.1f} s, brain {result.record['brain_ml']:.0f} mL)")
        for warning in result.record["warnings"]:
            print(f"warning: {path}: {warning}", file=sys.stderr)


def cmd_atlas(args: argparse.Namespace) -> None:
    from .atlas import make_user_atlas

    atlas = make_user_atlas(args.template, args.mask, args.output, args.name)
    print(f"atlas in {atlas.folder} ({atlas.info['brain_voxels']} brain voxels of 1 mm)")


def cmd_phantom(args: argparse.Namespace) -> None:
    from .phantom import write_phantom_set

    infos = write_phantom_set(args.output, args.kind, args.count, seed=args.seed, workers=args.workers,
                              start=args.start)
    print(f"wrote {len(infos)} {args.kind} phantoms to {args.output}")


def cmd_montage(args: argparse.Namespace) -> None:
    from .datasets import discover
    from .figures import phantom_montage
    from .volume_io import read_volume

    cases = discover(args.dataset)[: args.count]
    items = [(c.name, read_volume(c.image), read_volume(c.seg) if c.seg else None) for c in cases]
    print(phantom_montage(items, args.output))


def cmd_prepare(args: argparse.Namespace) -> None:
    from .datasets import prepare_dataset
    from .preprocess import PreprocessConfig

    config = PreprocessConfig(mask_method=args.mask_method, register=not args.no_register, atlas=args.atlas)
    summary = prepare_dataset(args.dataset, args.output, config, workers=args.workers, seed=args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    if summary["failed"]:
        print(f"{len(summary['failed'])} case(s) failed: see {Path(args.output) / 'failures.csv'}", file=sys.stderr)


def cmd_pack(args: argparse.Namespace) -> None:
    from .cache import pack_prepared

    summary = pack_prepared(args.prepared, args.output, tuple(args.splits) if args.splits else None)
    print(f"packed {summary['cases']} cases ({', '.join(summary['splits'])}) into {args.output}: "
          f"{summary['bytes'] / 1e6:.1f} MB")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .augment import contrast_named
    from .cache import load_prepared, select, split_of
    from .diffusion import levels_text
    from .evaluate import choose_t_test, evaluate, intensity_scorer, model_scorer, protocol_named, score_cases, write_report

    protocol = protocol_named(args.protocol)
    shift = contrast_named(args.contrast) if args.contrast else None
    if shift and args.save_threshold:
        raise ValueError("--save-threshold stores the operating point of the model's own contrast: "
                         "leave out --contrast")

    def cases(folder: str, split: str, fold: int | None = None):
        names = select(split_of(folder), split, fold) if args.use_splits else None
        loaded = load_prepared(folder, names, limit=args.max_volumes)
        return shift.cases(loaded) if shift else loaded

    if args.model == "thresh":
        if args.t_test or args.stride:
            raise ValueError("--t-test and --stride set a model's reconstruction; 'thresh' has none")
        scorer, card, fold = intensity_scorer, None, 0
        val = score_cases(cases(args.val, "val"), scorer)
    else:
        from .detect import DetectConfig, load_for_detection
        from .device import pick_device

        device = pick_device(args.device)
        model, card = load_for_detection(args.model, device)
        fold = card.training.get("fold", 0)
        for level in args.t_test or [None]:  # before any volume is scored
            DetectConfig(t_test=level, stride=args.stride).check_reconstruction(card)

        def scorer_at(t_test: tuple[int, ...] | None):
            return model_scorer(model, card, DetectConfig(t_test=t_test, stride=args.stride), device)

        t_test, val, level_dice = choose_t_test(cases(args.val, "val"), scorer_at, args.t_test or [None], protocol)
        scorer = scorer_at(t_test)
    test = score_cases(cases(args.test, "test"), scorer)
    healthy, healthy_val = [], []
    if args.healthy:
        healthy = score_cases(cases(args.healthy, "test"), scorer)
        # The reference's FPR thresholds come from the healthy validation fold (the model never
        # trained on it); without splits the healthy volumes serve for both.
        healthy_val = score_cases(cases(args.healthy, "val", fold), scorer) if args.use_splits else healthy
    result = evaluate(val, test, healthy, healthy_val, protocol)
    result["model"] = args.model
    if args.contrast:
        result["contrast"] = args.contrast
    if card is not None:
        result["t_test"] = list(t_test or card.config.diffusion.t_test)
        result["stride"] = args.stride or card.config.patch.stride
        result["whole_slice"] = card.config.patch.whole_slice
        if len(level_dice) > 1:
            result["t_test_val_dice_pooled"] = {levels_text(level): d for level, d in level_dice.items()}
    paths = write_report(result, test, args.output, f"{args.model} on {Path(args.test).name}")
    if args.save_threshold and card is not None:
        from .models import rewrite_card, with_operating_point

        chosen_on = {"val": str(args.val), "protocol": protocol.name, "val_dice_pooled": result["val_dice_pooled"]}
        earlier = card.training.get("threshold_from", {})
        if "t_test_val_dice_pooled" in result:
            chosen_on |= {"t_test_val_dice_pooled": result["t_test_val_dice_pooled"], "t_test_protocol": protocol.name}
        elif "t_test_val_dice_pooled" in earlier and tuple(result["t_test"]) == card.config.diffusion.t_test:
            # The card's t_test, chosen by an earlier run, is kept: so is the record of that choice.
            chosen_on |= {"t_test_val_dice_pooled": earlier["t_test_val_dice_pooled"],
                          "t_test_protocol": earlier.get("t_test_protocol", "ours")}
        card = with_operating_point(card, result["threshold"], tuple(result["t_test"]), result["stride"], chosen_on)
        print(f"threshold {card.threshold:.4f} and t_test {levels_text(card.config.diffusion.t_test)} saved in "
              f"{rewrite_card(card, args.model)}")
    print(f"Dice {100 * result['dice_mean']:.2f} % AUPRC {100 * result['auprc_mean']:.2f} % "
          f"(threshold {result['threshold']:.4f}, {protocol.name} protocol); wrote {', '.join(str(p) for p in paths)}")


def cmd_train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    config = TrainConfig(**given(args, TrainConfig))
    result = train(args.config, args.data, args.output, config, restart=args.restart, stage=args.stage,
                   stop_after_minutes=args.stop_after_minutes)
    if result.get("stopped"):
        print(f"stopped after {args.stop_after_minutes:g} minutes of this call; run it again to resume {args.output}")
    print(json.dumps(result))


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


def cmd_detect(args: argparse.Namespace) -> None:
    from .detect import DetectConfig, detect_file, json_progress, load_for_detection, preprocess_settings, text_progress
    from .device import pick_device
    from .resources import default_model_path

    if args.stop_with_parent:
        exit_when_orphaned()
    device = pick_device(args.device)
    model, card = load_for_detection(args.model or default_model_path(), device)
    overrides = {"mask_method": args.mask_method or ("file" if args.mask else None),
                 "register": False if args.no_register else None, "atlas": args.atlas}
    prep = preprocess_settings(card, **overrides)
    config = DetectConfig(t_test=args.t_test, stride=args.stride, batch_size=args.batch_size,
                          threshold=args.threshold, seed=args.seed)
    progress = json_progress if args.progress == "json" else text_progress
    output_folders(args.inputs, args.output)
    for path in args.inputs:
        summary = detect_file(path, args.output, model, card, config, prep, args.mask, device, progress)
        for warning in summary["warnings"]:
            print(f"warning: {path}: {warning}", file=sys.stderr, flush=True)
        if args.progress != "json":
            print(f"{path}: {summary['lesion_count']} lesion(s); "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in summary["timings_s"].items()))


def cmd_models(args: argparse.Namespace) -> None:
    from .models import CONFIGS
    from .profile import describe

    for name in args.names or CONFIGS:
        print(describe(name))


def cmd_device(args: argparse.Namespace) -> None:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                    count=torch.cuda.device_count())
    print(json.dumps(info))


def cmd_bench_noise(args: argparse.Namespace) -> None:
    from .profile import noise_benchmark

    for key, value in noise_benchmark(args.slices).items():
        print(f"{key:>18}: {value:.1f} slices/s" if isinstance(value, float) else f"{key:>18}: {value}")


def cmd_bench_train(args: argparse.Namespace) -> None:
    from .device import pick_device
    from .profile import train_step_benchmark

    device = pick_device(args.device)
    print(f"{args.config} on {device}, {os.cpu_count()} CPUs: ms per sample of a training step (median of {args.steps})")
    for row in train_step_benchmark(args.config, tuple(args.batch_size), tuple(args.variant), args.steps, device):
        print(f"{row['variant']:>14} batch {row['batch']:3d}: {row['ms_per_sample']:7.1f} ms/sample "
              f"(first step {row['first_step_s']:.1f} s, {row['threads']} threads)", flush=True)


def cmd_bench_detect(args: argparse.Namespace) -> None:
    import platform
    import shlex
    import tempfile

    from .profile import DEFAULT_VARIANTS, detect_benchmark, detect_table
    from .resources import sample_paths

    if args.input:
        volume, truth = Path(args.input), Path(args.truth) if args.truth else None
    else:
        volume, truth = sample_paths()
    variants = dict(args.variant) if args.variant else DEFAULT_VARIANTS
    with tempfile.TemporaryDirectory(prefix="maediff-bench-") as tmp:
        out = Path(args.output or tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = detect_benchmark(volume, {name: shlex.split(options) for name, options in variants.items()}, out, truth)
    print(f"{volume}, {platform.machine()} with {os.cpu_count()} CPUs\n")
    print(detect_table(rows))


def cmd_benchmark(args: argparse.Namespace) -> None:
    from .benchmark import BenchmarkConfig, markdown_table, run_benchmark, update_readme

    config = BenchmarkConfig(**given(args, BenchmarkConfig))
    summary = run_benchmark(args.output, config)
    table = markdown_table(summary)
    print(table)
    if args.readme:
        update_readme(args.readme, table, "maediff " + " ".join(sys.argv[1:]))


def cmd_publish(args: argparse.Namespace) -> None:
    from .models import publish_model

    notes = {"synthetic_data": args.synthetic_data}
    if args.data:
        notes["data"] = args.data
    if args.recipe:
        notes["command"] = Path(args.recipe).read_text()
    for path in publish_model(args.model, args.output, args.description, notes, half=args.half):
        print(path)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.output, args.model, args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maediff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("preprocess", help="bring T2 volumes into model space")
    p.add_argument("inputs", nargs="+", help="volume files (.nii.gz, .nrrd, .mha) or DICOM folders")
    p.add_argument("-o", "--output", required=True, help="output folder (one subfolder per input)")
    p.add_argument("--mask-method", default="atlas", choices=["atlas", "skull-stripped", "file", "hd-bet", "deepbet"])
    p.add_argument("--mask", help="brain mask volume on the input's grid (with --mask-method file)")
    p.add_argument("--atlas", help="atlas folder (default: the bundled MNI152 atlas)")
    p.add_argument("--no-register", action="store_true", help="input is already in atlas space")
    p.add_argument("--no-n4", action="store_true", help="skip bias-field correction")
    p.add_argument("--no-resample", action="store_true", help="register at native resolution")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("atlas", help="make an atlas folder from a brain template (e.g. SRI24) and its mask")
    p.add_argument("template", help="T1 brain template (skull-stripped)")
    p.add_argument("--mask", required=True, help="its brain mask")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--name")
    p.set_defaults(func=cmd_atlas)

    p = sub.add_parser("phantom", help="write synthetic T2 brains (healthy, tumour or MS lesions)")
    p.add_argument("kind", choices=["healthy", "tumour", "ms"])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-n", "--count", type=positive_int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=1, help="index of the first case")
    p.add_argument("--workers", type=positive_int, default=2)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("montage", help="PNG with one slice of each of the first cases of a data set")
    p.add_argument("dataset")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-n", "--count", type=positive_int, default=8)
    p.set_defaults(func=cmd_montage)

    p = sub.add_parser("prepare", help="preprocess a whole data set into a model-space cache")
    p.add_argument("dataset")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    p.add_argument("--mask-method", default="atlas", choices=["atlas", "skull-stripped"])
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--atlas", help="atlas folder (maediff atlas); default: the bundled MNI152 atlas")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pack", help="a prepared data set as one .npz for training where SimpleITK is absent")
    p.add_argument("prepared", help="folder written by maediff prepare")
    p.add_argument("-o", "--output", required=True, help="the .npz to write (train and evaluate read it as --data)")
    p.add_argument("--splits", nargs="+", choices=["train", "val", "test"], help="only these splits (default: all)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("evaluate", help="the evaluation protocol on prepared data sets")
    p.add_argument("--model", required=True, help="checkpoint, or 'thresh' for the intensity baseline")
    p.add_argument("--val", required=True, help="prepared unhealthy validation set")
    p.add_argument("--test", required=True, help="prepared unhealthy test set")
    p.add_argument("--healthy", help="prepared healthy set: l1 and operating points on its test split, the "
                                          "reference's FPR thresholds on the model's validation fold (with --use-splits)")
    p.add_argument("--use-splits", action="store_true",
                   help="take the 'val'/'test' rows of each folder's split.csv instead of all cases")
    p.add_argument("--max-volumes", type=positive_int, help="at most this many volumes of each set (quick CPU runs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--t-test", type=t_test_levels, nargs="+",
                   help="noise level of the reconstruction, or an ensemble such as 250,500,750 (default: the "
                        "model's); several candidates: the one with the best validation Dice is used")
    p.add_argument("--stride", type=positive_int, help="patch stride (default: the model's)")
    p.add_argument("--save-threshold", action="store_true",
                   help="store the validation threshold, with the t_test and stride it holds for, in the model card")
    p.add_argument("--protocol", default="reference", choices=["reference", "ours"],
                   help="reference: the protocol authors' steps, comparable with the papers (default); "
                        "ours: threshold searched on size-filtered lesions, l1 inside the brain")
    p.add_argument("--contrast", help="re-render every volume with another T2 contrast first: gamma-0.7, "
                                       "gamma-1.4 or bias-field (augment.CONTRAST_SHIFTS)")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a method on a prepared healthy cohort (resumes if interrupted)",
                       epilog="Defaults: the paper's for paper-size configurations, the measured CPU recipe "
                              "for the -small ones (maediff_core/train.py: TrainConfig, PAPER_RECIPE, CPU_RECIPE).")
    p.add_argument("--data", required=True, help="prepared healthy cohort (maediff prepare) or its pack (maediff pack)")
    p.add_argument("--config", required=True,
                   help="maediff, pddpm-s48, pddpm-s16, anoddpm, cddpm, madad (+ -small); `maediff models` lists them")
    p.add_argument("-o", "--output", required=True, help="run folder: checkpoints, metrics.csv, tb/")
    p.add_argument("--stage", choices=["autoencoder", "denoiser", "encoder"],
                   help="train only this stage: MAD-AD's autoencoder or denoiser (default: both in turn), or "
                        "cDDPM's encoder pre-training")
    p.add_argument("--pretrain", action="store_true", default=None,
                   help="cDDPM: pre-train its encoder on masked slices (SparK) in the run's encoder/ folder, "
                        "then train the whole network from it")
    p.add_argument("--first-stage-share", type=float,
                   help="the part of --max-minutes (the budget of all stages) that MAD-AD's autoencoder or "
                        "cDDPM's encoder pre-training takes (default 0.25)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--fold", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--slices-per-volume", type=positive_int)
    p.add_argument("--max-minutes", type=positive_float, help="stop at the first epoch end past this budget "
                                                              "(of all stages, split by --first-stage-share)")
    p.add_argument("--stop-after-minutes", type=positive_float,
                   help="end this call at the first epoch end past this many minutes of its own, resumably (a job "
                        "runner's time limit); the run's --max-minutes and its schedule stay as they are")
    p.add_argument("--schedule", choices=["constant", "cosine"],
                   help="learning rate: constant (the papers'), or cosine: a linear warm-up, then a decay to a tenth "
                        "over the run (--max-minutes, or --epochs where that ends first); default: the recipe's")
    p.add_argument("--warmup", type=float, help="cosine: the part of the run that warms up (default 0.05)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="intensity augmentation of the training slices (gamma, bias field, blur, ghosting); "
                        "default: as the method's paper (on for cDDPM only)")
    p.add_argument("--ema", type=float, help="keep an exponential moving average of the weights with this largest "
                                             "decay (e.g. 0.999) and publish it as the model; 0: none")
    p.add_argument("--init", metavar="MODEL", help="start the network from a published model's weights (its .json; "
                                                   "the same configuration) instead of random ones: a longer run of "
                                                   "a released model, or fine-tuning; the optimiser starts afresh")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in the run folder "
                                                          "(of every stage it trains)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("detect", help="anomaly heatmap, healthy reconstruction and lesions of T2 volumes")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", required=True, help="one subfolder per input")
    p.add_argument("--model", help="model .json/.safetensors (default: the bundled demo model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--progress", default="text", choices=["text", "json"])
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    p.add_argument("--t-test", type=t_test_levels,
                   help="noise level of the reconstruction, or an ensemble averaged, e.g. 250,500,750 "
                        "(default: the model's)")
    p.add_argument("--stride", type=positive_int, help="patch stride (default: the model's)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-method", choices=["atlas", "skull-stripped", "file", "hd-bet", "deepbet"])
    p.add_argument("--mask", help="brain mask on the input grid")
    p.add_argument("--no-register", action="store_true", help="input is already in atlas space")
    p.add_argument("--atlas", help="atlas folder (default: the one the model was trained with)")
    p.add_argument("--stop-with-parent", action="store_true",
                   help="exit when the starting process ends (for GUIs that launch through a launcher)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("models", help="parameter counts and GFLOPs per forward of the named configurations")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("device", help="JSON: torch version and the CUDA GPU it sees")
    p.set_defaults(func=cmd_device)

    p = sub.add_parser("bench-noise", help="slices per second of the simplex noise, torch vs opensimplex")
    p.add_argument("--slices", type=positive_int, default=256)
    p.set_defaults(func=cmd_bench_noise)

    p = sub.add_parser("bench-train", help="milliseconds per sample of a training step, per batch size and variant")
    p.add_argument("--config", default="maediff-small")
    p.add_argument("--batch-size", type=positive_int, nargs="+", default=[8, 16, 32])
    p.add_argument("--variant", nargs="+", default=["eager", "channels_last", "compile"],
                   choices=["eager", "channels_last", "compile"])
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per row, after one warm-up step")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_bench_train)

    p = sub.add_parser("bench-detect", help="seconds per stage and peak memory of maediff detect, per set of options")
    p.add_argument("input", nargs="?", help="T2 volume (default: the bundled sample, scored against its lesion)")
    p.add_argument("--truth", help="the input's lesion mask: Dice of each variant's lesions")
    p.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OPTIONS"),
                   help='maediff detect options to time, e.g. --variant stride48 "--stride 48" (repeatable; '
                        'default: the settings before batch 8 and stride 48, batch 8 alone, the defaults); '
                        'the first is the reference')
    p.add_argument("-o", "--output", help="keep the detection outputs here (default: a temporary folder)")
    p.set_defaults(func=cmd_bench_detect)

    p = sub.add_parser("benchmark", help="all methods on the phantom benchmark at an equal training budget",
                       epilog="Defaults: maediff_core/benchmark.py, BenchmarkConfig.")
    p.add_argument("-o", "--output", default="benchmark")
    p.add_argument("--minutes", type=positive_float, help="training budget per method")
    p.add_argument("--healthy", type=positive_int, help="healthy phantoms")
    p.add_argument("--tumour", type=positive_int, help="tumour phantoms")
    p.add_argument("--ms", type=positive_int, help="MS phantoms")
    p.add_argument("--seed", type=int)
    p.add_argument("--methods", nargs="+")
    p.add_argument("--contrasts", nargs="*", help="contrast shifts of the tumour set to score (default: all; "
                                                   "none: leave the check out)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--slices-per-volume", type=positive_int)
    p.add_argument("--ema", type=float, help="EMA decay of every method's weights (0: none)")
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--eval-val", type=positive_int, help="at most this many validation volumes per lesion set")
    p.add_argument("--eval-test", type=positive_int, help="at most this many test volumes per lesion set")
    p.add_argument("--eval-healthy", type=positive_int, help="at most this many healthy test (and validation) volumes")
    p.add_argument("--protocol", choices=["reference", "ours"], help="evaluation protocol (default: reference)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--readme", help="write the table into this README between the benchmark markers")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("publish", help="a trained model as a release: weights, JSON card and Markdown card")
    p.add_argument("model", help="trained model, e.g. runs/NAME/best.json")
    p.add_argument("-o", "--output", required=True, help="destination stem: writes STEM.safetensors/.json/.md")
    p.add_argument("--description", required=True)
    p.add_argument("--data", help="the training data, as the card should name it")
    p.add_argument("--recipe", help="a text file with the commands that made the model")
    p.add_argument("--synthetic-data", action="store_true", help="trained on phantoms: the card says so")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("demo", help="the bundled demo model on a generated sample case, with a figure")
    p.add_argument("-o", "--output", default="demo-output")
    p.add_argument("--model", help="model .json/.safetensors (default: the bundled demo model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (VolumeError, ValueError, FileNotFoundError) as err:
        print(f"maediff {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a defect, not bad input: one line for the user, the traceback in a log
        log = crash_log(args.command)
        print(f"maediff {args.command}: unexpected error: {type(err).__name__}: "
              f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''} (traceback in {log})", file=sys.stderr)
        return 1
    return 0


def crash_log(command: str) -> Path:
    import tempfile
    import traceback

    folder = Path(tempfile.gettempdir()) / "maediff-logs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(f"maediff {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    return path


if __name__ == "__main__":
    sys.exit(main())
