"""Seconds per stage, for the records and summaries that report where time goes."""

from __future__ import annotations

import time


class Laps:
    """Call with a stage name when the stage ends; ``seconds`` maps stage -> duration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._clock, 3)
        self._clock = now
