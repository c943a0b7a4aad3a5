"""Interleaved, repeated timing of several contenders on a noisy shared machine: medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved_medians(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Run every contender ``warmup`` times, then ``repeats`` rounds with the order rotated each round.

    Rotation spreads slow phases of a shared machine over all contenders; the median resists outliers.
    ``clock``: wall time by default; ``time.process_time`` (CPU time of this process, all threads) is
    disturbed least by other jobs on a shared machine.
    """
    def elapsed(run: Callable[[], object]) -> float:
        start = clock()
        run()
        return clock() - start

    samples = interleaved_samples(contenders, repeats, warmup, elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


def interleaved_samples(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int,
                        measure: Callable[[Callable[[], object]], Any]) -> dict[str, list[Any]]:
    """``measure(contender)`` for every contender over ``repeats`` rotated rounds, after ``warmup`` plain runs
    of each: the measurements per contender, in round order (``interleaved_medians`` takes their medians)."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    samples: dict[str, list[Any]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(measure(contenders[name]))
    return samples


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
