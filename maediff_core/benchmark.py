"""``maediff benchmark``: every method on the phantom benchmark at an equal training budget.

Builds (or reuses) the phantom sets and their model-space caches, trains each method for the same
number of minutes (or reuses a run trained with that budget), evaluates them and Thresh with the
protocol, on the phantoms' own contrast and on the tumour set re-rendered with other T2 contrasts,
and writes the tables the README shows.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .augment import CONTRAST_SHIFTS, contrast_named
from .cache import load_prepared, select, split_of
from .datasets import prepare_dataset
from .detect import DetectConfig
from .device import pick_device
from .errors import CardError
from .evaluate import PROTOCOLS, Scored, evaluate, intensity_scorer, model_scorer, protocol_named, score_cases
from .files import write_text_atomic
from .methods import method_of
from .methods.base import ModelConfig, Stage
from .modelfile import recipe_text
from .phantom import write_phantom_set
from .scoring import ScoringConfig
from .torch_runtime import load_torch_runtime
from .training import TrainConfig, train
from .training.settings import RESUMED_SETTINGS, changed_settings, resolved

README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


@dataclass(frozen=True)
class BenchmarkConfig:
    healthy: int = 100  # phantom subjects per set
    tumour: int = 20
    ms: int = 20
    seed: int = 0
    minutes: float = 20.0  # training budget of every method (MAD-AD: its two stages together)
    methods: tuple[str, ...] = ("anoddpm-small", "pddpm-s48-small", "pddpm-s16-small", "maediff-small", "cddpm-small",
                                "madad-small")
    contrasts: tuple[str, ...] = tuple(CONTRAST_SHIFTS)  # the cDDPM paper's domain question, on the tumour set
    batch_size: int | None = None  # None: each configuration's recipe (train.recipe_of)
    lr: float | None = None
    slices_per_volume: int | None = None
    ema: float | None = None
    schedule: str | None = None
    eval_val: int | None = None  # at most this many validation / test / healthy volumes per set
    eval_test: int | None = None  # (None: all); CPU runs subsample, GPU runs need not
    eval_healthy: int | None = None
    device: str = "auto"
    protocol: str = "reference"  # evaluate.PROTOCOLS: the protocol authors' steps, comparable with the papers
    scoring: str = "residual"  # every method's (scoring.ScoringConfig.from_label): the papers' residual


def build_data(out: Path, config: BenchmarkConfig, workers: int = 2) -> dict[str, Path]:
    prepared = {}
    for kind, count, offset in (("healthy", config.healthy, 0), ("tumour", config.tumour, 1), ("ms", config.ms, 2)):
        raw, cache = out / "data" / kind, out / "prepared" / kind
        manifest = raw / "phantoms.json"
        if not manifest.is_file() or len(json.loads(manifest.read_text())["cases"]) != count:
            write_phantom_set(raw, kind, count, seed=config.seed * 10 + offset, workers=workers)
        prepare_dataset(raw, cache, workers=workers, seed=config.seed)
        prepared[kind] = cache
    return prepared


def trained_run(method: str, healthy: Path, out: Path, config: BenchmarkConfig) -> Path:
    """The best checkpoint of ``method`` trained for the budget: a run that already spent it under
    the same settings is reused, a shorter one is resumed, a longer one is refused (its best
    checkpoint may come from after the budget)."""
    run_dir = out / "runs" / method
    settings = TrainConfig(epochs=10**6, batch_size=config.batch_size, lr=config.lr,
                           slices_per_volume=config.slices_per_volume, ema=config.ema, schedule=config.schedule,
                           max_minutes=config.minutes, seed=config.seed, device=config.device)
    last = run_dir / "last.json"
    if last.is_file():
        card = json.loads(last.read_text())["card"]
        done, model_config = card["training"], ModelConfig.from_dict(card["config"])
        if training_seconds(first_stages(model_config, done), done) >= 60 * config.minutes:
            wanted = resolved(settings, model_config)
            differs = changed_settings(done, wanted, ("max_minutes", *RESUMED_SETTINGS))
            if differs:
                raise CardError(f"{run_dir}: a run of {done['seconds'] / 60:.0f} minutes with other "
                                  f"{', '.join(differs)} than this benchmark's; benchmark into another folder (-o)")
            return run_dir / "best.json"
    train(method, healthy, run_dir, settings)  # new, or resumed up to the budget
    return run_dir / "best.json"


def first_stages(config: ModelConfig, training: dict) -> list[Stage]:
    """The stages a run of ``config`` trained before its last (MAD-AD's autoencoder, cDDPM's encoder
    pre-training)."""
    return method_of(config.method).stages(config, bool(training.get("pretrain")))[:-1]


def training_seconds(stages: list[Stage], training: dict) -> float:
    """A run's training time, that of its first ``stages`` included."""
    return training["seconds"] + sum((training.get(stage.name) or {}).get("seconds", 0.0) for stage in stages)


def trained_text(config: ModelConfig | None, training: dict | None) -> str:
    if not training:
        return "-"
    text = f"{training['epoch']} epochs, {training['step']} steps"
    stages = first_stages(config, training)
    for stage in stages:
        first = training.get(stage.name)
        if first:
            text += (f" after {stage.title} of {first['epoch']} epochs, {first['step']} steps "
                     f"({first['seconds'] / 60:.1f} of the {training_seconds(stages, training) / 60:.1f} minutes)")
    return text


def _cases(folder: Path, split: str, limit: int | None, fold: int | None = None):
    return load_prepared(folder, select(split_of(folder), split, fold), limit)


def run_benchmark(out_dir: str | Path, config: BenchmarkConfig = BenchmarkConfig()) -> dict:
    out = Path(out_dir)
    protocol = protocol_named(config.protocol)
    shifts = {name: contrast_named(name) for name in config.contrasts}  # refused before hours of work
    data = build_data(out, config)
    device = pick_device(config.device)
    sets = {kind: {"val": _cases(data[kind], "val", config.eval_val),
                   "test": _cases(data[kind], "test", config.eval_test)} for kind in ("tumour", "ms")}
    healthy = _cases(data["healthy"], "test", config.eval_healthy)
    # Every method trains on fold 0 (TrainConfig); its validation fold gives the reference's FPR thresholds.
    healthy_val = _cases(data["healthy"], "val", config.eval_healthy, fold=0)
    shifted = {name: {split: shift.cases(cases) for split, cases in sets["tumour"].items()}
               for name, shift in shifts.items()}
    rows = []
    for method in ("thresh", *config.methods):
        if method == "thresh":
            scorer, training, model_config = intensity_scorer, None, None
        else:
            best = trained_run(method, data["healthy"], out, config)
            runtime, card = load_torch_runtime(best, config.device)
            scoring = ScoringConfig.from_label(config.scoring)
            scorer, training = model_scorer(runtime, card, DetectConfig(), [scoring]), card.training
            model_config = card.config.to_dict()
        seconds: list[float] = []

        def timed(case, scorer=scorer, seconds=seconds):
            start = time.perf_counter()
            result = scorer(case)
            seconds.append(time.perf_counter() - start)
            return result

        row = {"method": method, "config": model_config, "training": training}
        healthy_scored: list[Scored] = score_cases(healthy, timed)
        healthy_val_scored: list[Scored] = score_cases(healthy_val, timed)
        for kind, split in sets.items():
            result = evaluate(score_cases(split["val"], timed), score_cases(split["test"], timed), healthy_scored,
                              healthy_val_scored, protocol, reading_val=healthy_val_scored)
            row[kind] = {k: v for k, v in result.items() if k != "per_case"}
        # Threshold chosen again on the shifted validation volumes, as on any new scanner's data.
        row["contrast"] = {name: {k: v for k, v in evaluate(score_cases(split["val"], timed),
                                                            score_cases(split["test"], timed),
                                                            protocol=protocol).items()
                                  if k in ("dice_mean", "auprc_mean", "kl_mean", "threshold")}
                           for name, split in shifted.items()}
        row["detect_seconds_per_volume"] = sum(seconds) / len(seconds)
        rows.append(row)
        print(f"{method}: tumour Dice {100 * row['tumour']['dice_mean']:.1f} %, "
              f"MS Dice {100 * row['ms']['dice_mean']:.1f} %, {row['detect_seconds_per_volume']:.1f} s/volume",
              flush=True)
    summary = {"config": asdict(config), "device": _device_name(device), "rows": rows,
               "counts": {kind: {s: len(v) for s, v in split.items()} for kind, split in sets.items()}
               | {"healthy_test": len(healthy), "healthy_val": len(healthy_val)}}
    write_text_atomic(json.dumps(summary, indent=1) + "\n", out / "benchmark.json")
    write_text_atomic(markdown_table(summary), out / "benchmark.md")
    return summary


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    processor = platform.processor() or platform.machine()
    return f"CPU ({processor}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def recipes_text(rows: list[dict]) -> str:
    """The methods' training recipes, each once: 'a, b: batch 16, ...; c: ...'."""
    recipes: dict[str, list[str]] = {}
    for row in rows:
        if row["training"]:
            recipes.setdefault(recipe_text(row["training"]), []).append(row["method"])
    return "; ".join(f"{', '.join(methods)}: {text}" for text, methods in recipes.items())


def markdown_table(summary: dict) -> str:
    config = summary["config"]
    counts = summary["counts"]
    lines = [
        "| method | tumour Dice | tumour AUPRC | MS Dice | MS AUPRC | healthy l1 (1e-3) | false alarms per normal "
        "brain | detect s / volume | training |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        t, m = row["tumour"], row["ms"]
        l1 = t.get("l1_mean")
        trained = trained_text(row.get("config") and ModelConfig.from_dict(row["config"]), row["training"])
        lines.append(f"| {row['method']} | {100 * t['dice_mean']:.1f} | {100 * t['auprc_mean']:.1f} | "
                     f"{100 * m['dice_mean']:.1f} | {100 * m['auprc_mean']:.1f} | "
                     f"{'-' if l1 is None else f'{1000 * l1:.1f}'} | {alarms_text(t)} | "
                     f"{row['detect_seconds_per_volume']:.1f} | {trained} |")
    lines += [
        "",
        f"Phantoms: {config['healthy']} healthy, {config['tumour']} tumour, {config['ms']} MS (seed {config['seed']}); "
        f"evaluated on {counts['tumour']['val']}+{counts['tumour']['test']} tumour and "
        f"{counts['ms']['val']}+{counts['ms']['test']} MS validation+test volumes, {counts['healthy_test']} "
        "healthy test "
        f"volumes ({counts['healthy_val']} healthy validation volumes for the FPR thresholds). "
        f"Budget: {config['minutes']:g} training minutes per method on {summary['device']}; "
        f"{recipes_text(summary['rows'])}. Evaluation protocol: {config['protocol']} "
        f"({PROTOCOLS[config['protocol']].summary}): Dice and AUPRC in per cent, per volume then averaged; "
        f"threshold from the validation volumes of each set; healthy l1 over the "
        f"{'brain' if PROTOCOLS[config['protocol']].l1_in_brain else 'whole volume'}. False alarms: lesion "
        "candidates per healthy test volume, mean (max), at the protocol's threshold / at the reading operating "
        f"point chosen on the healthy validation volumes; scoring {config.get('scoring', 'residual')}.",
    ]
    contrasts = config.get("contrasts", [])
    if contrasts:
        lines += ["", "| method | tumour Dice / KL | " + " | ".join(f"{name} Dice / KL" for name in contrasts) + " |",
                  "|---" * (len(contrasts) + 2) + "|"]
        for row in summary["rows"]:
            cells = [row["tumour"], *(row["contrast"][name] for name in contrasts)]
            lines.append(f"| {row['method']} | " + " | ".join(
                f"{100 * c['dice_mean']:.1f} / " + ("-" if c.get("kl_mean") is None else f"{c['kl_mean']:.3f}")
                for c in cells) + " |")
        lines += ["", "The tumour set re-rendered with other T2 contrasts (`augment.CONTRAST_SHIFTS`: gamma 0.7 and "
                  "1.4 on the brain's intensities, a fixed bias field), the threshold chosen again on its validation "
                  "volumes; KL: divergence of the reconstruction's brain-intensity histogram from the input's "
                  "(test volumes, mean; lower follows the input's contrast more closely)."]
    return "\n".join(lines) + "\n"


def alarms_text(result: dict) -> str:
    """Candidates per normal brain, mean (max), at the protocol's point / the reading point."""
    alarms = result.get("false_alarms", {})
    parts = [f"{a['healthy_candidates_mean']:.1f} ({a['healthy_candidates_max']})"
             for a in (alarms.get("protocol"), alarms.get("reading")) if a and "healthy_candidates_mean" in a]
    return " / ".join(parts) or "-"


def update_readme(readme: str | Path, table: str, command: str) -> None:
    """Replace the text between the benchmark markers of the README with the table."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} section")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    block = f"{README_START}\n```bash\n{command}\n```\n\n{table}{README_END}"
    write_text_atomic(head + block + tail, readme)
