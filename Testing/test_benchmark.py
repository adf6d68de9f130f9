"""The benchmark's table and its place in the README (the full run is `maediff benchmark`)."""

from dataclasses import replace

import pytest
from conftest import FAST, TINY

from maediff_core.benchmark import README_END, README_START, BenchmarkConfig, markdown_table, trained_run, update_readme
from maediff_core.errors import CardError
from maediff_core.methods import get_config
from maediff_core.training import Trainer

RECIPE = {"batch_size": 16, "lr": 5e-4, "schedule": "cosine", "warmup": 0.05, "ema": 0.999, "slices_per_volume": 8}


def summary():
    metrics = {"dice_mean": 0.4231, "auprc_mean": 0.5, "l1_mean": 0.0123, "kl_mean": 0.0456,
               "false_alarms": {"protocol": {"healthy_candidates_mean": 2.5, "healthy_candidates_max": 4},
                                "reading": {"healthy_candidates_mean": 0.5, "healthy_candidates_max": 1}}}
    shifted = {"gamma-0.7": {"dice_mean": 0.301, "auprc_mean": 0.2, "kl_mean": 0.1234, "threshold": 0.1}}
    return {"config": {"healthy": 100, "tumour": 20, "ms": 20, "seed": 0, "minutes": 10.0, "batch_size": 16,
                       "lr": 2e-4, "slices_per_volume": 8, "protocol": "reference", "contrasts": ["gamma-0.7"]},
            "device": "CPU (x86_64, 2 cores, 2 threads)",
            "counts": {"tumour": {"val": 4, "test": 16}, "ms": {"val": 4, "test": 16}, "healthy_test": 28,
                       "healthy_val": 14},
            "rows": [{"method": "thresh", "training": None, "tumour": {**metrics, "l1_mean": None, "kl_mean": None},
                      "ms": metrics, "detect_seconds_per_volume": 0.01,
                      "contrast": {"gamma-0.7": {**shifted["gamma-0.7"], "kl_mean": None}}},
                     {"method": "maediff-small", "config": get_config("maediff-small").to_dict(),
                      "training": {"epoch": 12, "step": 96, **RECIPE}, "tumour": metrics,
                      "ms": metrics, "detect_seconds_per_volume": 140.2, "contrast": shifted},
                     {"method": "madad-small", "config": get_config("madad-small").to_dict(),
                      "training": {"epoch": 30, "step": 60, "seconds": 540.0, **RECIPE,
                                   "autoencoder": {"epoch": 10, "step": 20, "seconds": 180.0}},
                      "tumour": metrics, "ms": metrics, "detect_seconds_per_volume": 9.5, "contrast": shifted}]}


def test_table_rows_in_per_cent():
    table = markdown_table(summary())
    assert "| thresh | 42.3 | 50.0 | 42.3 | 50.0 | - | 2.5 (4) / 0.5 (1) | 0.0 | - |" in table
    assert ("| maediff-small | 42.3 | 50.0 | 42.3 | 50.0 | 12.3 | 2.5 (4) / 0.5 (1) | 140.2 | 12 epochs, 96 steps |"
            in table)
    assert ("| madad-small | 42.3 | 50.0 | 42.3 | 50.0 | 12.3 | 2.5 (4) / 0.5 (1) | 9.5 | 30 epochs, 60 steps after "
            "the autoencoder "
            "stage of 10 epochs, 20 steps (3.0 of the 12.0 minutes) |") in table
    assert ("10 training minutes per method on CPU (x86_64, 2 cores, 2 threads); maediff-small, madad-small: batch 16, "
            "learning rate 0.0005 (cosine schedule, warm-up 5 % of the run), published as the EMA of its weights "
            "(decay 0.999), 8 slices per volume per epoch. Evaluation") in table
    assert "Evaluation protocol: reference (the steps of the protocol authors' utils_eval.py)" in table
    assert "healthy l1 over the whole volume" in table
    assert "| method | tumour Dice / KL | gamma-0.7 Dice / KL |" in table
    assert "| thresh | 42.3 / - | 30.1 / - |" in table and "| maediff-small | 42.3 / 0.046 | 30.1 / 0.123 |" in table


def test_the_command_line_sets_every_methods_scoring(monkeypatch, tmp_path, capsys):
    import maediff_core.benchmark as benchmark
    from maediff_core.cli import main

    runs = []
    monkeypatch.setattr(benchmark, "run_benchmark", lambda out, config: runs.append(config) or summary())
    main(["benchmark", "-o", str(tmp_path)])
    main(["benchmark", "-o", str(tmp_path), "--scoring", "mhd:4:raw"])
    assert [config.scoring for config in runs] == ["residual", "mhd:4:raw"]
    with pytest.raises(SystemExit):
        main(["benchmark", "-o", str(tmp_path), "--scoring", "mean:1"])
    assert "scoring mean takes two or more" in capsys.readouterr().err and len(runs) == 2
    table = markdown_table(summary() | {"config": summary()["config"] | {"scoring": "mhd:4"}})
    assert "scoring mhd:4." in table


def test_readme_section_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{README_START}\nOLD TABLE\n{README_END}\n\nmore text\n")
    update_readme(readme, markdown_table(summary()), "maediff benchmark --minutes 10")
    text = readme.read_text()
    assert "OLD TABLE" not in text and "maediff benchmark --minutes 10" in text and text.endswith("more text\n")
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="benchmark:start"):
        update_readme(readme, "x", "y")


def test_a_run_is_reused_only_under_the_budget_it_was_trained_for(tmp_path, healthy_prepared):
    minutes = 0.001  # one epoch passes it
    Trainer(TINY, replace(FAST, epochs=5, max_minutes=minutes), healthy_prepared, tmp_path / "runs" / "tiny").fit()
    same = BenchmarkConfig(minutes=minutes, batch_size=FAST.batch_size, lr=FAST.lr,
                           slices_per_volume=FAST.slices_per_volume, seed=FAST.seed)
    assert trained_run("tiny", healthy_prepared, tmp_path, same) == tmp_path / "runs" / "tiny" / "best.json"
    with pytest.raises(CardError, match="other max_minutes than"):
        trained_run("tiny", healthy_prepared, tmp_path, replace(same, minutes=minutes / 2))
    with pytest.raises(CardError, match="other lr than"):
        trained_run("tiny", healthy_prepared, tmp_path, replace(same, lr=1e-3))
