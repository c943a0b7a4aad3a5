"""Interleaved, repeated timing of several contenders on a noisy shared machine: medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Run every contender ``warmup`` times, then ``repeats`` rounds with the order rotated each round.

    Rotation spreads slow phases of a shared machine over all contenders; the median resists outliers.
    ``clock``: wall time by default; ``time.process_time`` (CPU time of this process, all threads) is
    disturbed least by other jobs on a shared machine.
    """
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            contenders[name]()
            samples[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
