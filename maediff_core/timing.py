"""Seconds per stage, for the records and summaries that report where time goes."""

from __future__ import annotations

import time
from collections.abc import Callable


class Laps:
    """Call with a stage name when the stage ends; ``seconds`` maps stage -> duration.
    ``on_lap`` hears each stage name as it ends (progress reports)."""

    def __init__(self, on_lap: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()
        self._on_lap = on_lap

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._clock, 3)
        self._clock = now
        if self._on_lap is not None:
            self._on_lap(stage)
