"""The ``maediff`` command line: the contract between the core and the Slicer module.

Each command's options sit beside its handler, in the module of its stage: ``data`` (preprocess,
atlas, phantom, montage, prepare, pack), ``train``, ``evaluate``, ``detect``, ``models`` (models,
device, publish, demo) and ``bench`` (bench-noise, bench-train, bench-detect, benchmark).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from ..errors import MaediffError
from . import bench, data, detect, evaluate, models, train

MODULES = (data, train, evaluate, detect, models, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maediff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in MODULES:
        for add in module.COMMANDS:
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["maediff", *argv])  # as typed: what a card records of its measurements
    try:
        args.func(args)
    except (MaediffError, ValueError, FileNotFoundError) as err:
        print(f"maediff {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a defect, not bad input: one line for the user, the traceback in a log
        log = crash_log(args.command, args.command_line)
        print(f"maediff {args.command}: unexpected error: {type(err).__name__}: "
              f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''} (traceback in {log})", file=sys.stderr)
        return 1
    return 0


def crash_log(command: str, command_line: str) -> Path:
    import tempfile
    import traceback

    folder = Path(tempfile.gettempdir()) / "maediff-logs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(f"{command_line}\n\n{traceback.format_exc()}")
    return path
