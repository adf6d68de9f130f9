"""Commands that make and prepare data: preprocess, atlas, phantom, montage, prepare, pack."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..files import check_writable, folder_as_a_set, output_folders
from ..preprocess_config import MASK_METHODS
from .options import positive_int


def add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="bring T2 volumes into model space")
    p.add_argument("inputs", nargs="+", help="volume files (.nii.gz, .nrrd, .mha) or DICOM folders")
    p.add_argument("-o", "--output", required=True, help="output folder (one subfolder per input)")
    p.add_argument("--mask-method", default="atlas", choices=MASK_METHODS)
    p.add_argument("--mask", help="brain mask volume on the input's grid (with --mask-method file)")
    p.add_argument("--atlas", help="atlas folder (default: the bundled MNI152 atlas)")
    p.add_argument("--no-register", action="store_true", help="input is already in atlas space")
    p.add_argument("--no-n4", action="store_true", help="skip bias-field correction")
    p.add_argument("--no-resample", action="store_true", help="register at native resolution")
    p.set_defaults(func=run_preprocess)


def run_preprocess(args: argparse.Namespace) -> None:
    from ..atlas import Atlas
    from ..preprocess import PreprocessConfig, preprocess_file

    config = PreprocessConfig(register=not args.no_register, mask_method=args.mask_method,
                              bias_correction=not args.no_n4, resample_1mm=not args.no_resample, atlas=args.atlas)
    folders = output_folders(args.inputs, args.output)
    check_writable(Path(args.output))
    atlas = Atlas.load(args.atlas)
    for path, folder in zip(args.inputs, folders, strict=True):
        start = time.perf_counter()
        result = preprocess_file(path, config, atlas, args.mask)
        with folder_as_a_set(folder) as out:
            result.save(out)
        print(f"{path} -> {folder} ({time.perf_counter() - start:.1f} s, brain {result.record['brain_ml']:.0f} mL)")
        for warning in result.record["warnings"]:
            print(f"warning: {path}: {warning}", file=sys.stderr)


def add_atlas(sub) -> None:
    p = sub.add_parser("atlas", help="make an atlas folder from a brain template (e.g. SRI24) and its mask")
    p.add_argument("template", help="T1 brain template (skull-stripped)")
    p.add_argument("--mask", required=True, help="its brain mask")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--name")
    p.set_defaults(func=run_atlas)


def run_atlas(args: argparse.Namespace) -> None:
    from ..atlas import make_user_atlas

    atlas = make_user_atlas(args.template, args.mask, args.output, args.name)
    print(f"atlas in {atlas.folder} ({atlas.info['brain_voxels']} brain voxels of 1 mm)")


def add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write synthetic brains (healthy, tumour or MS lesions), T2 unless told")
    p.add_argument("kind", choices=["healthy", "tumour", "ms"])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-n", "--count", type=positive_int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=1, help="index of the first case")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--weighting", default="T2", choices=["T2", "T1", "FLAIR", "PD"],
                   help="tissue contrast (the others are for testing the contrast check)")
    p.set_defaults(func=run_phantom)


def run_phantom(args: argparse.Namespace) -> None:
    from ..phantom import PhantomConfig, write_phantom_set

    infos = write_phantom_set(args.output, args.kind, args.count, seed=args.seed, workers=args.workers,
                              config=PhantomConfig(weighting=args.weighting), start=args.start)
    print(f"wrote {len(infos)} {args.kind} phantoms to {args.output}")


def add_montage(sub) -> None:
    p = sub.add_parser("montage", help="PNG with one slice of each of the first cases of a data set")
    p.add_argument("dataset")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-n", "--count", type=positive_int, default=8)
    p.set_defaults(func=run_montage)


def run_montage(args: argparse.Namespace) -> None:
    from ..datasets import discover
    from ..figures import phantom_montage
    from ..volume_io import read_volume

    cases = discover(args.dataset)[: args.count]
    items = [(c.name, read_volume(c.image), read_volume(c.seg) if c.seg else None) for c in cases]
    print(phantom_montage(items, args.output))


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="preprocess a whole data set into a model-space cache")
    p.add_argument("dataset")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    p.add_argument("--mask-method", default="atlas", choices=["atlas", "atlas-deformable", "skull-stripped"])
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--atlas", help="atlas folder (maediff atlas); default: the bundled MNI152 atlas")
    p.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from ..datasets import prepare_dataset
    from ..preprocess import PreprocessConfig

    config = PreprocessConfig(mask_method=args.mask_method, register=not args.no_register, atlas=args.atlas)
    summary = prepare_dataset(args.dataset, args.output, config, workers=args.workers, seed=args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    if summary["failed"]:
        print(f"{len(summary['failed'])} case(s) failed: see {Path(args.output) / 'failures.csv'}", file=sys.stderr)


def add_pack(sub) -> None:
    p = sub.add_parser("pack", help="a prepared data set as one .npz for training where SimpleITK is absent")
    p.add_argument("prepared", help="folder written by maediff prepare")
    p.add_argument("-o", "--output", required=True, help="the .npz to write (train and evaluate read it as --data)")
    p.add_argument("--splits", nargs="+", choices=["train", "val", "test"], help="only these splits (default: all)")
    p.set_defaults(func=run_pack)


def run_pack(args: argparse.Namespace) -> None:
    from ..cache import pack_prepared

    summary = pack_prepared(args.prepared, args.output, tuple(args.splits) if args.splits else None)
    print(f"packed {summary['cases']} cases ({', '.join(summary['splits'])}) into {args.output}: "
          f"{summary['bytes'] / 1e6:.1f} MB")


COMMANDS = (add_preprocess, add_atlas, add_phantom, add_montage, add_prepare, add_pack)
