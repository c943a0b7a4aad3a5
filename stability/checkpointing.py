"""Checkpointed backpropagation through a solve: plain backprop's gradient with O(√steps) memory.

The steps run in chunks under ``torch.utils.checkpoint`` (non-reentrant): a chunk keeps only its starting
state and is re-run in the backward pass from a snapshot of the stepper, retracing every step, decision and
output exactly. Chunks of ⌈√N⌉ steps (N fixed steps), or chunk k of k steps when adaptive (≈ √(2N) chunks of
≤ √(2N) steps), store at most one chunk plus the chunk boundaries. Cost: one extra forward pass.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from stability.base import Times, TimeVectorField
from stability.checks import check_times
from stability.integrate import make_stepper, solution
from stability.options import SolverOptions


def solve_checkpoint(func: TimeVectorField, y0: Tensor, t: Times, options: SolverOptions):
    """Gradient strategy "checkpoint": the loop of ``integrate.run`` in chunks under
    ``torch.utils.checkpoint`` (any stepper: shared, fixed grid or per-sample)."""
    times = check_times(t)
    stepper, values = run_checkpointed(make_stepper(func, y0, times, options), options)
    return solution(stepper, y0, values, t, times, options)


def run_checkpointed(stepper, options: SolverOptions) -> tuple[object, list[Tensor]]:
    """``integrate.run`` in checkpointed chunks: (the finished stepper, the output values in order)."""
    chunk_sizes = _chunk_sizes(options, stepper)
    values: list[Tensor] = []
    checkpointing = torch.is_grad_enabled()
    while not stepper.finished:
        chunk = _Chunk(stepper, next(chunk_sizes))
        state = stepper.state()
        if checkpointing:
            # No early stop: the recomputation runs to the end of the chunk, where it is checked.
            with set_checkpoint_early_stop(False):
                produced = checkpoint(chunk, *state, use_reentrant=False)
        else:
            produced = chunk(*state)
        stepper = chunk.after
        stepper.set_state(tuple(produced[: len(state)]))
        values.extend(produced[len(state) :])
    return stepper, values


class _Chunk:
    """Up to ``n_steps`` iterations of the loop from a snapshot of the stepper, the same on every call: the
    first advances a copy (the live stepper afterwards), the backward pass's recomputations start again from
    the snapshot and check that they retrace the same steps."""

    def __init__(self, stepper, n_steps: int):
        self.start, self.n_steps = stepper.snapshot(), n_steps
        self.after = None

    def __call__(self, *state: Tensor) -> tuple[Tensor, ...]:
        stepper = self.start.snapshot()
        stepper.set_state(state)
        values: list[Tensor] = []
        for _ in range(self.n_steps):
            if stepper.finished:
                break
            values.extend(stepper.advance())
        if self.after is None:
            self.after, self.position = stepper, stepper.position()
            self.end = [x.detach() for x in stepper.state()]
        else:
            self._check_replay(stepper)
        return (*stepper.state(), *values)

    def _check_replay(self, stepper) -> None:
        position = stepper.position()
        if position != self.position:
            raise RuntimeError(f"recomputation took different steps (ended at {position[0]!r}, not "
                               f"{self.position[0]!r}): func must be deterministic for checkpointed "
                               f"gradients")
        with torch.no_grad():  # tolerate atomics-level noise, not a different function
            for now, before in zip(stepper.state(), self.end):
                drift = float(torch.linalg.vector_norm(now - before))
                size = float(torch.linalg.vector_norm(before))
                if not drift <= 1e-6 * size + 1e-30:
                    raise RuntimeError(f"recomputation took different steps (its state at {position[0]!r} "
                                       f"differs by {drift:.3g} in norm): func must be deterministic for "
                                       f"checkpointed gradients")


def _chunk_sizes(options: SolverOptions, stepper) -> Iterator[int]:
    """Steps per chunk: ``checkpoint_every``; ⌈√N⌉ for N fixed steps; 1, 2, 3, … when adaptive."""
    if options.checkpoint_every is not None:
        return itertools.repeat(options.checkpoint_every)
    if options.fixed_step:
        return itertools.repeat(max(1, math.ceil(math.sqrt(len(stepper.solver.grid) - 1))))
    return itertools.count(1)
