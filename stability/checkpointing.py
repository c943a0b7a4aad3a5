"""Checkpointed backpropagation through a solve: plain backprop's gradient with O(√steps) memory.

The steps are grouped into chunks run under ``torch.utils.checkpoint`` (non-reentrant): a chunk keeps only its
starting state during the forward pass and is re-run during the backward pass to rebuild its graph. With
chunks of ⌈√N⌉ steps (N known for fixed steps) the stored graph is at most one chunk plus √N chunk
boundaries; for adaptive solves (N unknown in advance) chunk k holds k steps, so after N steps there are
≈ √(2N) chunks of ≤ √(2N) steps. Every step, every accept/reject decision and every output is recomputed
exactly (the solver state at each chunk start is snapshotted), so the gradient is that of the forward
discretisation — identical to plain backprop, unlike the adjoint method. Cost: one extra forward pass.
This is diffrax's default (``RecursiveCheckpointAdjoint``) brought to the PyTorch solvers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from stability.checks import as_float_list
from stability.errors import ODEInputError
from stability.odeint import _HIT_TOLERANCE, _check_finite_trajectory, start_solver
from stability.solution import Solution
from stability.solver import DEFAULT_ATOL, DEFAULT_MAX_STEPS, DEFAULT_RTOL, OdeSolver
from stability.step_control import PIController

TimeVectorField = Callable[[Tensor, Tensor], Tensor]


def odeint_checkpointed(func: TimeVectorField, y0: Tensor, t: Tensor | Sequence[float], **options) -> Tensor:
    """``odeint`` whose backward pass recomputes chunks of steps; see ``solve_checkpointed``."""
    return solve_checkpointed(func, y0, t, **options).ys


def solve_checkpointed(
    func: TimeVectorField,
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    method: str = "dopri5",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    step_size: float | None = None,
    grid: Tensor | Sequence[float] | None = None,
    first_step: float | None = None,
    max_step: float = math.inf,
    max_steps: int = DEFAULT_MAX_STEPS,
    controller: PIController | None = None,
    checkpoint_every: int | None = None,
) -> Solution:
    """Like ``solve``; gradients equal plain backprop's, with the stored graph O(√steps) instead of O(steps).

    ``checkpoint_every``: steps per chunk (default ⌈√N⌉ for fixed steps, growing 1, 2, 3, … when adaptive).
    ``func`` must be deterministic (the backward pass re-runs it); gradients reach y0 and every tensor func
    uses, parameters and captured tensors alike. Without grad mode this is exactly ``solve``.
    """
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ODEInputError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    solver, times = start_solver(
        func, y0, t, method=method, rtol=rtol, atol=atol, step_size=step_size, grid=grid,
        first_step=first_step, max_step=max_step, max_steps=max_steps, controller=controller,
    )
    chunk_sizes = _chunk_sizes(solver, times, step_size, grid, checkpoint_every)
    span = abs(times[-1] - times[0])
    outputs: list[Tensor] = [y0]
    checkpointing = torch.is_grad_enabled()
    while solver.status == "running":
        chunk = _Chunk(solver, next(chunk_sizes), times, len(outputs), span)
        if checkpointing:
            # No early stop: the recomputation runs to the end of the chunk, where it is checked.
            with set_checkpoint_early_stop(False):
                produced = checkpoint(chunk, solver.y, use_reentrant=False)
        else:
            produced = chunk(solver.y)
        solver = chunk.solver_after
        solver.y = produced[0]
        outputs.extend(produced[1:])
    ys = torch.stack(outputs)
    if solver.fixed_step:
        _check_finite_trajectory(ys, times)
    t_out = t if isinstance(t, Tensor) else torch.tensor(times, dtype=y0.dtype)
    return Solution(t=t_out, ys=ys, stats=solver.stats, method=method)


class _Chunk:
    """Up to ``n_steps`` accepted steps from a snapshot of the solver; the same on every call.

    The first call advances a copy of the solver (the live one afterwards); recomputations in the backward
    pass start again from the snapshot and check that they retrace the same steps.
    """

    def __init__(self, solver: OdeSolver, n_steps: int, times: list[float], first_output: int, span: float):
        self.snapshot = copy.copy(solver)
        # The previous step's interpolation data is not needed to continue; dropping it keeps each chunk
        # boundary at y (and, for FSAL methods, its first stage) instead of all stages of the last step.
        for name in ("y_old", "_stages"):
            if hasattr(self.snapshot, name):
                setattr(self.snapshot, name, None)
        self.n_steps, self.times, self.first_output, self.span = n_steps, times, first_output, span
        self.solver_after: OdeSolver | None = None
        self.stats = None

    def __call__(self, y: Tensor) -> tuple[Tensor, ...]:
        solver = copy.copy(self.snapshot)
        solver.stats = copy.deepcopy(self.snapshot.stats)  # running totals: max_steps counts all chunks
        solver.y = y
        times, margin, index = self.times, _HIT_TOLERANCE * self.span, self.first_output
        outputs: list[Tensor] = []
        for _ in range(self.n_steps):
            if solver.status != "running":
                break
            solver.step()
            while index < len(times) and solver.direction * (times[index] - solver.t) <= margin:
                if abs(times[index] - solver.t) <= margin:
                    outputs.append(solver.y)
                else:
                    outputs.append(solver.dense_output()(times[index]))
                index += 1
        if self.solver_after is None:
            self.solver_after, self.stats, self.y_end = solver, solver.stats, solver.y.detach()
        elif solver.t != self.solver_after.t or solver.stats.n_steps != self.stats.n_steps:
            raise RuntimeError(
                f"recomputation took different steps (ended at t={solver.t!r}, not {self.solver_after.t!r}): "
                f"func must be deterministic for checkpointed gradients"
            )
        else:
            with torch.no_grad():  # tolerate atomics-level noise, not a different function
                drift = float(torch.linalg.vector_norm(solver.y - self.y_end))
                size = float(torch.linalg.vector_norm(self.y_end))
            if not drift <= 1e-6 * size + 1e-30:
                raise RuntimeError(
                    f"recomputation took different steps (its state at t={solver.t!r} differs by {drift:.3g} "
                    f"in norm): func must be deterministic for checkpointed gradients"
                )
        return (solver.y, *outputs)


def _chunk_sizes(solver: OdeSolver, times, step_size, grid, checkpoint_every):
    if checkpoint_every is not None:
        while True:
            yield checkpoint_every
    if solver.fixed_step:
        if grid is not None:
            n = len(as_float_list(grid, "grid")) - 1
        else:
            n = max(1, math.ceil(abs(times[-1] - times[0]) / float(step_size) - 1e-9))
        size = max(1, math.ceil(math.sqrt(n)))
        while True:
            yield size
    size = 1
    while True:
        yield size
        size += 1

