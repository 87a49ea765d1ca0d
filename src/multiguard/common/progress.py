"""Progress lines for long steps: :class:`ProgressPrinter` turns :class:`multiguard.runs.job.RunProgress` updates
into a line every few seconds. No torch here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiguard.runs.job import RunProgress

__all__ = ["Log", "ProgressPrinter"]

Log = Callable[[str], None]
"""A line callback: called with one line of progress text (``print`` prints it)."""


class ProgressPrinter:
    """Turns :class:`multiguard.runs.job.RunProgress` updates into a line every ``every`` seconds (and at the end)."""

    def __init__(self, log: Log, n: int, every: float = 5.0, prefix: str = "certify", header: str = "") -> None:
        self.log, self.n, self.every, self.prefix, self.header = log, int(n), float(every), prefix, header
        self._last = -1e9
        self._started = False
        self.repairs_shown: tuple[str, ...] = ()  # the repairs of a resume printed so far

    def __call__(self, p: RunProgress) -> None:
        now = time.perf_counter()
        finished = p.done_inputs >= p.total_inputs
        if not self._started:  # the first call comes once the model, data and RUN_DIR are ready
            self._started = True
            if self.header:
                self.log(f"{self.prefix}: {self.header}")
            for line in p.repairs:  # what a resume found damaged (a chunk cut short, ...) and redoes
                self.log(f"{self.prefix}: {line}")
            self.repairs_shown = tuple(p.repairs)
            if not p.skipped_inputs and not finished:
                return
        elif not finished and now - self._last < self.every:
            return
        self._last = now
        parts = [f"{self.prefix}: {p.done_inputs}/{p.total_inputs} inputs"]
        if p.skipped_inputs:
            parts.append(f"{p.skipped_inputs} found on disk")
        if p.new_inputs:
            rate = p.samples_per_second
            left = (p.total_inputs - p.done_inputs) * self.n / rate if rate > 0 else 0.0
            parts.append(f"{rate:,.0f} samples/s")
            parts.append(f"{p.seconds:.0f} s" + ("" if finished else f", about {left:.0f} s left"))
        self.log(", ".join(parts))


