"""``maediff train``."""

from __future__ import annotations

import argparse
import json

from .options import DEVICES, given, positive_float, positive_int


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a method on a prepared healthy cohort (resumes if interrupted)",
                       epilog="Defaults: the paper's for paper-size configurations, the measured CPU recipe "
                              "for the -small ones (maediff_core/training/settings.py: TrainConfig, PAPER_RECIPE, "
                              "CPU_RECIPE).")
    p.add_argument("--data", required=True, help="prepared healthy cohort (maediff prepare) or its pack (maediff pack)")
    p.add_argument("--config", required=True, help="a named configuration; `maediff models` lists them")
    p.add_argument("-o", "--output", required=True, help="run folder: checkpoints, metrics.csv, tb/")
    p.add_argument("--stage", help="train only this stage of a method that trains in several (MAD-AD: autoencoder "
                                   "or denoiser; cDDPM: encoder, its pre-training); default: every stage in turn")
    p.add_argument("--pretrain", action="store_true", default=None,
                   help="the method's optional first stage too (cDDPM: masked pre-training of its encoder, SparK, "
                        "in the run's encoder/ folder), then the whole network from it")
    p.add_argument("--first-stage-share", type=float,
                   help="the part of --max-minutes (the budget of all stages) that a first stage (MAD-AD's "
                        "autoencoder, cDDPM's encoder pre-training) takes (default 0.25)")
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
    p.add_argument("--device", choices=DEVICES)
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
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> None:
    from ..training import TrainConfig, train

    config = TrainConfig(**given(args, TrainConfig))
    result = train(args.config, args.data, args.output, config, restart=args.restart, stage=args.stage,
                   stop_after_minutes=args.stop_after_minutes)
    if result.get("stopped"):
        print(f"stopped after {args.stop_after_minutes:g} minutes of this call; run it again to resume {args.output}")
    print(json.dumps(result))


COMMANDS = (add_train,)
