"""Progress that tells the truth: work measured in model passes, advanced from inside long attacks.

An attack's work on one sample is at most ``passes_per_sample(attack)`` model evaluations: its query
budget for score- and decision-based attacks (Square, the Boundary Attack), and for gradient attacks
``2 x iterations x runs + 1`` (a forward and a backward pass per iteration, one run per restart and target
class, one clean pass). A suite run plans, for each (attack, eps) record it computes, ``samples x
passes_per_sample``; long attacks report the fraction of their budget spent on the current batch through
:attr:`attacks.base.Attack.on_progress` (Square and the Boundary Attack per query, APGD per restart and
target), which advances the work done. Planned work that will not be done leaves the plan as soon as it is
known (``skip``): samples the cascade no longer attacks (after each record, for the attacks left at that
eps; after each eps, as an estimate, for the attacks after the first at the larger ones, corrected when
their record starts) and the budget an attack did not spend because every sample of its batch was fooled.
The time left is then the work left divided by the rate of the work actually done, not the cost of the
last record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .base import Attack

__all__ = ["BatchProgress", "SuiteProgress", "innermost", "passes_per_sample"]


class SuiteProgress(Protocol):
    """What :func:`attacks.run_suite` reports while it runs (e.g. to a progress bar)."""

    def start(self, total: float) -> None:
        """The work this run will do at most, in model passes (records reused from a resume excluded)."""

    def running(self, attack: str, eps: float) -> None:
        """The (attack, eps) record that starts now."""

    def advance(self, work: float) -> None:
        """``work`` more model passes done."""

    def skip(self, work: float) -> None:
        """``work`` model passes of the plan that will not be done (out of the total, not done); negative when
        an estimate proves low and work comes back into the plan."""


def innermost(attack: Attack) -> Attack:
    """The attack that does the work inside wrappers (transfer, surrogate solver): follows ``.inner``."""
    while isinstance(getattr(attack, "inner", None), Attack):
        attack = attack.inner
    return attack


def passes_per_sample(attack: Attack) -> float:
    """The most model passes ``attack`` spends on one sample (see the module docstring)."""
    attack = innermost(attack)
    queries = getattr(attack, "max_queries", None)
    if queries is not None:
        return float(queries)
    runs = getattr(attack, "restarts", 1) * getattr(attack, "target_classes", 1)
    return 2.0 * getattr(attack, "steps", 1) * runs + 1.0


class BatchProgress:
    """Turns an attack's "fraction of my budget spent on this batch" into work: ``advance`` gets the
    increments of ``fraction x work``. :meth:`finish` settles the rest: skipped (``skip``) when the attack
    reported progress and stopped early, advanced when it reported nothing (it did the work silently)."""

    def __init__(self, advance: Callable[[float], None], work: float,
                 skip: Callable[[float], None] | None = None) -> None:
        self.advance, self.skip, self.work, self.done = advance, skip, float(work), 0.0

    def __call__(self, fraction: float) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if fraction > self.done:
            self.advance((fraction - self.done) * self.work)
            self.done = fraction

    def finish(self) -> None:
        if self.skip is not None and 0.0 < self.done < 1.0:
            self.skip((1.0 - self.done) * self.work)
            self.done = 1.0
        self(1.0)
