"""``maediff evaluate``: the evaluation protocol on prepared data sets."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OptionError
from .options import DEVICES, positive_int, scoring_label, t_test_levels


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="the evaluation protocol on prepared data sets")
    p.add_argument("--model", required=True, help="checkpoint, or 'thresh' for the intensity baseline")
    p.add_argument("--val", required=True, help="prepared unhealthy validation set")
    p.add_argument("--test", required=True, help="prepared unhealthy test set")
    p.add_argument("--healthy", help="prepared healthy set: l1 and operating points on its test split, the "
                                     "reference's FPR thresholds on the model's validation fold (with --use-splits)")
    p.add_argument("--use-splits", action="store_true",
                   help="take the 'val'/'test' rows of each folder's split.csv instead of all cases")
    p.add_argument("--max-volumes", type=positive_int, help="at most this many volumes of each set (quick CPU runs)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--t-test", type=t_test_levels, nargs="+",
                   help="noise level of the reconstruction, or an ensemble such as 250,500,750 (default: the "
                        "model's); several candidates: the one with the best validation Dice is used")
    p.add_argument("--stride", type=positive_int, help="patch stride (default: the model's)")
    p.add_argument("--scoring", type=scoring_label, nargs="+",
                   help="how reconstructions become the anomaly map: residual, mean:N (the residual to the mean of "
                        "N reconstructions) or mhd:N (the Mahalanobis distance from N; mhd:N:raw without the "
                        "per-volume normalisation); several: all from one draw of reconstructions, the one with the "
                        "best validation Dice is used and every one reported (default: the model's)")
    p.add_argument("--save-threshold", action="store_true",
                   help="store the validation threshold, with the t_test, stride and scoring it holds for, in the "
                        "model card; with --healthy and --use-splits, also the reading operating point")
    p.add_argument("--protocol", default="reference", choices=["reference", "ours"],
                   help="reference: the protocol authors' steps, comparable with the papers (default); "
                        "ours: threshold searched on size-filtered lesions, l1 inside the brain")
    p.add_argument("--contrast", help="re-render every volume with another T2 contrast first: gamma-0.7, "
                                      "gamma-1.4 or bias-field (augment.CONTRAST_SHIFTS)")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> None:
    from ..augment import contrast_named
    from ..evaluate import evaluate, protocol_named, score_each, write_report

    protocol = protocol_named(args.protocol)
    shift = contrast_named(args.contrast) if args.contrast else None
    if shift and args.save_threshold:
        raise OptionError("--save-threshold stores the operating point of the model's own contrast: "
                          "leave out --contrast")

    def cases(folder: str, split: str, fold: int | None = None):
        from ..cache import load_prepared, select, split_of

        names = select(split_of(folder), split, fold) if args.use_splits else None
        loaded = load_prepared(folder, names, limit=args.max_volumes)
        return shift.cases(loaded) if shift else loaded

    chosen = choose_scorer(args, cases, protocol)
    scorer, label = chosen["scorer"], chosen["scoring"]
    test = score_each(cases(args.test, "test"), scorer)
    healthy, healthy_val = {}, {}
    if args.healthy:
        healthy = score_each(cases(args.healthy, "test"), scorer)
        # The reference's FPR thresholds come from the healthy validation fold (the model never
        # trained on it); without splits the healthy volumes serve for both, and choose nothing.
        healthy_val = score_each(cases(args.healthy, "val", chosen["fold"]), scorer) if args.use_splits else healthy
    results = {name: evaluate(chosen["val"][name], test[name], healthy.get(name, []), healthy_val.get(name, []),
                              protocol, reading_val=healthy_val.get(name, []) if args.use_splits else ())
               for name in test}
    result = results[label]
    result |= {"model": args.model, "scoring": label}
    if len(results) > 1:  # every candidate on the same reconstructions, reported; chosen on validation
        result["scorings"] = {name: {k: v for k, v in r.items() if k != "per_case"} for name, r in results.items()}
    if args.contrast:
        result["contrast"] = args.contrast
    result.update(reconstruction_record(args, chosen))
    paths = write_report(result, test[label], args.output, f"{args.model} on {Path(args.test).name}")
    if args.save_threshold and chosen["card"] is not None:
        save_operating_point(args, chosen["card"], result, protocol.name)
    print(f"Dice {100 * result['dice_mean']:.2f} % AUPRC {100 * result['auprc_mean']:.2f} % "
          f"(threshold {result['threshold']:.4f}, {protocol.name} protocol); wrote {', '.join(str(p) for p in paths)}")


def choose_scorer(args: argparse.Namespace, cases, protocol) -> dict:
    """The scorer (Thresh, or the model at the noise levels the validation volumes choose), its
    card, the model's validation fold and the scored validation volumes."""
    from ..evaluate import choose_reconstruction, intensity_scorer, model_scorer, score_each

    if args.model == "thresh":
        if args.t_test or args.stride or args.scoring:
            raise OptionError("--t-test, --stride and --scoring set a model's reconstruction; 'thresh' has none")
        return {"scorer": intensity_scorer, "card": None, "fold": 0, "t_test": None, "dices": {}, "scoring": "thresh",
                "val": score_each(cases(args.val, "val"), intensity_scorer)}
    from ..detect import DetectConfig
    from ..runtime import load_runtime

    runtime, card = load_runtime(args.model, "auto", args.device)
    for level in args.t_test or [None]:  # before any volume is scored
        DetectConfig(t_test=level, stride=args.stride).check_reconstruction(card)

    def scorer_at(t_test: tuple[int, ...] | None):
        return model_scorer(runtime, card, DetectConfig(t_test=t_test, stride=args.stride), args.scoring or ())

    choice = choose_reconstruction(cases(args.val, "val"), scorer_at, args.t_test or [None], protocol)
    return {"scorer": scorer_at(choice.levels), "card": card, "fold": card.training.get("fold", 0),
            "t_test": choice.levels, "scoring": choice.scoring, "dices": choice.dices, "val": choice.val}


def reconstruction_record(args: argparse.Namespace, chosen: dict) -> dict:
    """What the model reconstructed with, for metrics.json."""
    from ..diffusion_config import levels_text

    card = chosen["card"]
    if card is None:
        return {}
    record = {"t_test": list(chosen["t_test"] or card.config.diffusion.t_test),
              "stride": args.stride or card.config.patch.stride, "whole_slice": card.config.patch.whole_slice}
    levels = {level for level, _ in chosen["dices"]}
    if len(levels) > 1:  # each level's best pooled Dice over the scorings
        record["t_test_val_dice_pooled"] = {
            levels_text(level or card.config.diffusion.t_test): max(d for (lv, _), d in chosen["dices"].items()
                                                                   if lv == level) for level in levels}
    if len(chosen["dices"]) > len(levels):
        record["scoring_val_dice_pooled"] = {label: d for (level, label), d in chosen["dices"].items()
                                             if level == chosen["t_test"]}
    return record


def save_operating_point(args: argparse.Namespace, card, result: dict, protocol: str) -> None:
    """The threshold, with the t_test and stride it holds for, into the model's card."""
    from ..diffusion_config import levels_text
    from ..files import write_text_atomic
    from ..modelfile import model_paths, rewrite_card, with_operating_point
    from ..scoring import ScoringConfig

    chosen_on = {"val": str(args.val), "protocol": protocol, "val_dice_pooled": result["val_dice_pooled"]}
    earlier = card.training.get("threshold_from", {})
    if "t_test_val_dice_pooled" in result:
        chosen_on |= {"t_test_val_dice_pooled": result["t_test_val_dice_pooled"], "t_test_protocol": protocol}
    elif "t_test_val_dice_pooled" in earlier and tuple(result["t_test"]) == card.config.diffusion.t_test:
        # The card's t_test, chosen by an earlier run, is kept: so is the record of that choice.
        chosen_on |= {"t_test_val_dice_pooled": earlier["t_test_val_dice_pooled"],
                      "t_test_protocol": earlier.get("t_test_protocol", "ours")}
    if "scoring_val_dice_pooled" in result:
        chosen_on["scoring_val_dice_pooled"] = result["scoring_val_dice_pooled"]
    reading = None
    if "reading" in result:
        reading = {k: result["reading"][k] for k in ("threshold", "min_voxels", "val_dice_pooled",
                                                     "healthy_val_candidates_mean", "target")}
        fold = card.training.get("fold", 0)
        reading["chosen_on"] = {"val": str(args.val), "healthy_val": f"{args.healthy} (validation fold {fold})"}
    card = with_operating_point(card, result["threshold"], tuple(result["t_test"]), result["stride"], chosen_on,
                                ScoringConfig.from_label(result["scoring"]), reading)
    # What the card says about the model is measured here; the whole evaluation is kept beside it.
    evaluation = model_paths(args.model)[1].with_suffix(".evaluation.json")
    card.metrics[Path(args.test).name] = test_metrics(args, result, evaluation.name)
    write_text_atomic((Path(args.output) / "metrics.json").read_text(), evaluation)
    print(f"threshold {card.threshold:.4f}, t_test {levels_text(card.config.diffusion.t_test)}, scoring "
          f"{card.scoring.label}" + (f" and the reading point ({reading['threshold']:.4f}, lesions of "
                                     f"{reading['min_voxels']}+ voxels)" if reading else "")
          + f" saved in {rewrite_card(card, args.model)}, the evaluation in {evaluation}")


def test_metrics(args: argparse.Namespace, result: dict, evaluation: str) -> dict:
    """The card's record of the test numbers: data, protocol, n, mean and standard deviation per
    measure, and the command and file they come from."""
    entry = {"data": f"{Path(args.test).name} (test split)", "protocol": result["protocol"], "n": result["n_test"],
             "scoring": result["scoring"], "dice": {"mean": result["dice_mean"], "std": result["dice_std"]},
             "auprc": {"mean": result["auprc_mean"], "std": result["auprc_std"]},
             "command": args.command_line, "evaluation": evaluation}
    if "reading" in result:
        entry["reading_dice"] = {"mean": result["reading"]["dice_mean"], "std": result["reading"]["dice_std"]}
    alarms = result["false_alarms"]
    if "healthy_candidates_mean" in alarms["protocol"]:
        entry |= {"n_healthy": result["n_healthy"], "l1": {"mean": result["l1_mean"]},
                  "case_auroc": result["case_auroc"]}
        for point, numbers in alarms.items():
            entry[f"healthy_candidates_{point}"] = {"mean": numbers["healthy_candidates_mean"],
                                                    "max": numbers["healthy_candidates_max"]}
    return entry


COMMANDS = (add_evaluate,)
