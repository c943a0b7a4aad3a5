"""Progress that tells the truth: work measured in model passes, advanced from inside long attacks.

An attack's work on one sample is at most ``passes_per_sample(attack)`` model evaluations: its query
budget for score- and decision-based attacks (Square, the Boundary Attack), and for gradient attacks
``2 x iterations x runs + 1`` (a forward and a backward pass per iteration, one run per restart and target
class, one clean pass). A suite run's work is the sum over the (attack, eps) records it computes of
``samples x passes_per_sample``; samples the cascade no longer attacks are credited as done when their
record starts, and long attacks report the fraction of their budget spent on the current batch through
:attr:`attacks.base.Attack.on_progress` (Square and the Boundary Attack per query, APGD per restart and
target). The estimated time left is then the work left divided by the rate so far, not the cost of the
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
    """Turns an attack's "fraction of my budget spent on this batch" into work advanced: ``callback`` gets
    the increments of ``fraction x work``; :meth:`finish` credits the rest (an attack that stopped early,
    or one that reports nothing)."""

    def __init__(self, advance: Callable[[float], None], work: float) -> None:
        self.advance, self.work, self.done = advance, float(work), 0.0

    def __call__(self, fraction: float) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if fraction > self.done:
            self.advance((fraction - self.done) * self.work)
            self.done = fraction

    def finish(self) -> None:
        self(1.0)
