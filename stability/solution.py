"""What a solve returns: the trajectory and the solver's statistics, with no side channels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stability.status import Status

# Output times this close (relative to the span) to a step end are taken from the step, not interpolated.
HIT_TOLERANCE = 1e-12


def output_reached(target, t_end, direction: float, margin: float):
    """(reached, at_end) for output time ``target`` and a step ending at ``t_end``: the step has passed it
    (to within ``margin`` = HIT_TOLERANCE·span), and it lies at the step's end (its value is y_{n+1}, no
    interpolation). Numbers (shared step control) or per-sample tensors [B]: the one rule of both steppers."""
    gap = target - t_end
    return direction * gap <= margin, abs(gap) <= margin


@dataclass
class SolverStats:
    """Counters of one integration: f evaluations, accepted/rejected steps, and every accepted step."""

    nfe: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    step_sizes: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)

    @property
    def n_steps(self) -> int:
        return self.n_accepted + self.n_rejected


@dataclass
class Solution:
    """``ys[i]`` is the solution at ``t[i]``; ``stats`` describes how it was obtained. ``status`` (int64, one
    ``stability.status.Status`` code; [B] per sample) and ``t_reached`` (float64, likewise) say how each
    integration ended and how far it got; ``messages`` the error of each failed one (None where none):
    with ``throw=False`` output times past ``t_reached`` hold NaN."""

    t: Tensor
    ys: Tensor
    stats: SolverStats
    method: str
    status: Tensor | None = None
    t_reached: Tensor | None = None
    messages: list[str | None] | None = None

    @property
    def succeeded(self) -> bool:
        """Whether every integration reached the end (terminal events count as success)."""
        if self.status is None:
            return True
        return bool(((self.status == Status.SUCCESS) | (self.status == Status.EVENT)).all())


@dataclass
class PerSampleSolution(Solution):
    """``ys[i, b]`` is sample b at ``t[i]``; ``stats[b]`` describes sample b's own integration."""

    stats: list[SolverStats]

    @property
    def nfe(self) -> list[int]:
        return [s.nfe for s in self.stats]


@dataclass
class EventSolution(Solution):
    """A ``Solution`` with every recorded crossing, in time order per sample: ``event_index[k]`` (which
    event), ``event_sample[k]``, ``event_t[k]`` (float64) and ``event_y[k]`` (the state there), the last two
    differentiable (implicit-function theorem). Samples stopped by a terminal event have status
    ``Status.EVENT``, ``t_reached`` = their event time and NaN outputs after it."""

    event_index: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    event_sample: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    event_t: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    event_y: Tensor | None = None

    def first(self, event: int) -> tuple[Tensor, Tensor]:
        """(t* [B], y* [B, ...]) of each sample's first crossing of event number ``event`` (NaN where none),
        differentiable."""
        batch = self.ys.shape[1]
        t_first = torch.full((batch,), math.nan, dtype=torch.float64, device=self.event_t.device)
        y_first = torch.full_like(self.ys[0], math.nan)
        rows = (self.event_index == event).nonzero().squeeze(1).flip(0)  # last write wins: the earliest
        samples = self.event_sample.index_select(0, rows)
        for k, b in zip(rows.tolist(), samples.tolist()):  # N crossings: a loop over a small log
            where = (torch.tensor([b], device=self.event_t.device),)
            t_first = t_first.index_put(where, self.event_t[k : k + 1])
            y_first = y_first.index_put(where, self.event_y[k : k + 1])
        return t_first, y_first
