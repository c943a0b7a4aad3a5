"""Per-sample adaptive step control: the leading dimension of y0 holds independent problems.

A shared (whole-batch) adaptive solve — ``solve``'s default, and torchdiffeq's only mode — takes one step size
for the batch from one error norm over all samples, so sample i's prediction depends on which other samples
share its batch (and every sample pays for the stiffest). Here every sample has its own time, step size,
PI-controller memory, accept/reject decision, dense output and statistics; the algorithm is the shared
solver's step by step, vectorised over samples with masks and a per-sample h, and each iteration runs f only
on the samples still integrating. So sample i's trajectory and NFE are those of solving it alone, in any
batch — provided f itself treats samples independently (GroupNorm, LayerNorm, convolutions and eval-mode
BatchNorm do; train-mode BatchNorm or anything else that mixes samples breaks that independence).

Convention: in this mode ``func(t, y)`` receives t as a tensor of shape [B_active] (one time per row of y;
autonomous fields ignore it, non-autonomous ones broadcast it, e.g. ``t[:, None]``). For fixed-step methods
the steps are the same for every sample anyway; t is then the common time expanded to [B].
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stability.checks import (
    check_derivative,
    check_low_precision,
    check_output,
    check_state,
    check_times,
    check_tolerances,
    max_steps_error,
)
from stability.errors import (
    NonFiniteValueError,
    ODEInputError,
    StepSizeUnderflowError,
)
from stability.odeint import _HIT_TOLERANCE, solve
from stability.solution import Solution, SolverStats
from stability.solver import (
    DEFAULT_ATOL,
    DEFAULT_MAX_STEPS,
    DEFAULT_RTOL,
    MAX_NONFINITE_REJECTIONS,
    STRETCH,
    RungeKuttaSolver,
    solver_class,
)
from stability.step_control import LOW_PRECISION_DTYPES, PIController
from stability.tableau import ButcherTableau

TimeVectorField = Callable[[Tensor, Tensor], Tensor]


@dataclass
class PerSampleSolution(Solution):
    """``ys[i, b]`` is sample b at ``t[i]``; ``stats[b]`` describes sample b's own integration."""

    stats: list[SolverStats]

    @property
    def nfe(self) -> list[int]:
        return [s.nfe for s in self.stats]


def odeint_per_sample(func: TimeVectorField, y0: Tensor, t: Tensor | Sequence[float], **options) -> Tensor:
    """``odeint`` with independent step control per sample (leading dimension); see ``solve_per_sample``."""
    return solve_per_sample(func, y0, t, **options).ys


def solve_per_sample(
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
) -> PerSampleSolution:
    """Solve the B problems y0[b] (B = y0.shape[0]), each with its own adaptive steps; options as ``solve``.

    Sample b's solution and statistics equal those of ``solve(func, y0[b:b+1], t, ...)`` up to round-off.
    ``max_steps`` applies to each sample. Gradients flow to y0 and func's parameters as in ``solve``.
    """
    check_state(y0)
    if y0.dim() < 1:
        raise ODEInputError("per-sample mode needs a leading batch dimension in y0")
    batch = y0.shape[0]
    times = check_times(t)
    cls = solver_class(method)
    if step_size is not None or grid is not None or not issubclass(cls, RungeKuttaSolver):
        sol = solve(
            lambda s, y: func(s.expand(y.shape[0]), y),
            y0,
            t,
            method=method,
            rtol=rtol,
            atol=atol,
            step_size=step_size,
            grid=grid,
            first_step=first_step,
            max_step=max_step,
            max_steps=max_steps,
            controller=controller,
        )
        return PerSampleSolution(sol.t, sol.ys, [copy.deepcopy(sol.stats) for _ in range(batch)], method)
    tableau = cls.tableau
    if not tableau.adaptive:
        raise ODEInputError(f"method '{method}' has no embedded error estimate: give step_size or grid")
    check_tolerances(rtol, atol)
    check_low_precision(y0.dtype, rtol)
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ODEInputError(f"max_steps must be a positive integer, got {max_steps!r}")
    if not max_step > 0:
        raise ODEInputError(f"max_step must be positive, got {max_step}")
    integrator = _PerSampleIntegrator(
        func, tableau, y0, times, float(rtol), float(atol), first_step, float(max_step), max_steps,
        controller or PIController(),
    )
    ys = integrator.run()
    t_out = t if isinstance(t, Tensor) else torch.tensor(times, dtype=y0.dtype)
    return PerSampleSolution(t_out, ys, integrator.statistics(), method)


class _PerSampleIntegrator:
    """Vectorised ``RungeKuttaSolver._adaptive_step`` with per-sample t, h, controller memory and counters."""

    def __init__(
        self,
        func: TimeVectorField,
        tableau: ButcherTableau,
        y0: Tensor,
        times: list[float],
        rtol: float,
        atol: float,
        first_step: float | None,
        max_step: float,
        max_steps: int,
        controller: PIController,
    ) -> None:
        self.func, self.tableau, self.times = func, tableau, times
        self.rtol, self.atol, self.max_step, self.max_steps = rtol, atol, max_step, max_steps
        self.controller = controller
        self.batch = y0.shape[0]
        self.device, self.dtype = y0.device, y0.dtype
        self.time_dtype = y0.dtype if y0.dtype in (torch.float32, torch.float64) else torch.float32
        self.t0, self.t_bound = times[0], times[-1]
        self.direction = 1.0 if self.t_bound > self.t0 else -1.0
        self.span = abs(self.t_bound - self.t0)
        self.first_step = first_step
        self.y0 = y0
        index = dict(dtype=torch.int64, device=self.device)
        self.nfe = torch.zeros(self.batch, **index)
        self.n_accepted = torch.zeros(self.batch, **index)
        self.n_rejected = torch.zeros(self.batch, **index)
        self.step_records: list[tuple[Tensor, Tensor, Tensor]] = []  # (samples, h, t) of accepted steps
        self.output_records: list[tuple[Tensor, Tensor, Tensor]] = []  # (output index, samples, values)

    # --- helpers -------------------------------------------------------------------------------------
    def _column(self, values: Tensor) -> Tensor:
        """A per-sample scalar (float64, [A]) as a state-dtype column broadcastable against y[A, ...]."""
        return values.to(self.dtype).view(-1, *([1] * (self.y0.dim() - 1)))

    def _evaluate(self, t: Tensor, y: Tensor, samples: Tensor) -> Tensor:
        self.nfe.index_add_(0, samples, torch.ones_like(samples))
        f = self.func(t.to(self.time_dtype), y)
        if not isinstance(f, Tensor) or f.shape != y.shape or f.dtype != y.dtype:
            check_output(f, y, None)
        return f

    def _combine(self, y: Tensor | None, stages: list[Tensor], weights, h: Tensor) -> Tensor:
        out = y
        for j, w in weights:
            term = self._column(h * w) * stages[j]
            out = term if out is None else out + term
        if out is None:
            return y.clone() if y is not None else torch.zeros_like(stages[0])
        return out

    def _rms(self, x: Tensor) -> Tensor:
        per_sample = x.reshape(x.shape[0], -1)
        return torch.linalg.vector_norm(per_sample, dim=1) / math.sqrt(max(per_sample.shape[1], 1))

    # --- set-up --------------------------------------------------------------------------------------
    def _initial_step(self, y0: Tensor, f0: Tensor, everyone: Tensor) -> Tensor:
        """``step_control.initial_step`` per sample (one probe evaluation of f for the whole batch)."""
        interval = self.span
        with torch.no_grad():
            scale = y0.abs().mul(self.rtol).add_(self.atol)
            d0 = self._rms(y0 / scale).double()
            d1 = self._rms(f0 / scale).double()
            small = (d0 < 1e-5) | (d1 < 1e-5)
            h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / torch.where(small, 1.0, d1))
            h0 = h0.clamp(max=interval)
            y1 = y0 + self._column(self.direction * h0) * f0
            f1 = self._evaluate(self.t0 + self.direction * h0, y1, everyone)
            d2 = self._rms((f1 - f0) / scale).double() / h0
            order = self.tableau.error_order
            big = torch.maximum(d1, d2)
            h1 = torch.where(
                ~torch.isfinite(d2),
                h0 * 1e-3,
                torch.where(
                    (d1 <= 1e-15) & (d2 <= 1e-15),
                    torch.clamp(h0 * 1e-3, min=1e-6),
                    (0.01 / big.clamp(min=1e-300)) ** (1.0 / (order + 1)),
                ),
            )
            return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, interval))

    # --- the integration -----------------------------------------------------------------------------
    def run(self) -> Tensor:
        tableau, controller, q = self.tableau, self.controller, self.tableau.error_order
        batch, f64 = self.batch, dict(dtype=torch.float64, device=self.device)
        everyone = torch.arange(batch, device=self.device)
        t = torch.full((batch,), self.t0, **f64)
        y = self.y0
        f0 = self._evaluate(t, y, everyone)
        check_derivative(f0, y, self.t0)
        if self.first_step is not None:
            if not (0 < self.first_step <= self.span):
                raise ODEInputError(f"first_step must lie in (0, {self.span}], got {self.first_step}")
            h_abs = torch.full((batch,), float(self.first_step), **f64)
        else:
            h_abs = self._initial_step(y, f0, everyone)
        h_abs = h_abs.clamp(max=self.max_step)
        first_stage = f0
        known = torch.ones(batch, dtype=torch.bool, device=self.device)  # first stage f(t, y) available
        previous_ratio = torch.ones(batch, **f64)
        rejected_before = torch.zeros(batch, dtype=torch.bool, device=self.device)  # in the current step
        nonfinite = torch.zeros(batch, dtype=torch.int64, device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        times = torch.tensor(self.times, **f64)
        next_output = torch.ones(batch, dtype=torch.int64, device=self.device)
        alpha = 1.0 / (q + 1) - 0.75 * controller.beta
        while True:
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            all_active = active.numel() == batch

            def take(x: Tensor, active: Tensor = active, all_active: bool = all_active) -> Tensor:
                return x if all_active else x.index_select(0, active)

            t_a, y_a, h_a = take(t), take(y), take(h_abs)
            self._check_step_budget(active, t_a, h_a)
            t_new = t_a + self.direction * h_a
            overshoot = self.direction * (t_new + STRETCH * self.direction * h_a - self.t_bound) >= 0
            t_new = torch.where(overshoot, torch.full_like(t_new, self.t_bound), t_new)
            h = t_new - t_a
            h_a = h.abs()
            self._check_underflow(active, t_a, h_a, take(nonfinite))
            # stages
            known_a, stage0 = take(known), take(first_stage)
            need = (~known_a).nonzero().squeeze(1)
            if need.numel() > 0:
                fresh = self._evaluate(t_a.index_select(0, need), y_a.index_select(0, need), active[need])
                stage0 = stage0.index_copy(0, need, fresh)
            stages = [stage0]
            stage_input = y_a
            for c, row in tableau.stage_plan:
                stage_input = self._combine(y_a, stages, row, h)
                stages.append(self._evaluate(t_a + c * h, stage_input, active))
            y_new = stage_input if tableau.fsal else self._combine(y_a, stages, tableau.b_plan, h)
            with torch.no_grad():
                error = self._combine(None, stages, tableau.error_plan, h)
                y_low, y_high = y_a, y_new
                if error.dtype in LOW_PRECISION_DTYPES:
                    error, y_low, y_high = error.float(), y_low.float(), y_high.float()
                scale = torch.maximum(y_low.abs(), y_high.abs()).mul_(self.rtol).add_(self.atol)
                ratio = self._rms(error / scale).double()
            accept = ratio <= 1.0
            # controller, vectorised as PIController.accept_factor / reject_factor
            prev_a, rejected_a = take(previous_ratio), take(rejected_before)
            grow = controller.safety * ratio.pow(-alpha) * prev_a.pow(controller.beta)
            grow = grow.clamp(controller.min_factor, controller.max_factor)
            grow = torch.where(ratio == 0, torch.full_like(grow, controller.max_factor), grow)
            grow = torch.where(rejected_a, grow.clamp(max=1.0), grow)
            shrink = (controller.safety * ratio.pow(-alpha)).clamp(controller.min_factor, 1.0)
            finite_ratio = torch.isfinite(ratio)
            shrink = torch.where(finite_ratio, shrink, torch.full_like(shrink, controller.min_factor))
            h_next = torch.where(accept, (h_a * grow).clamp(max=self.max_step), h_a * shrink)
            nonfinite_a = torch.where(accept | finite_ratio, 0, take(nonfinite) + 1)
            if bool((nonfinite_a >= MAX_NONFINITE_REJECTIONS).any()):
                i = int((nonfinite_a >= MAX_NONFINITE_REJECTIONS).nonzero()[0, 0])
                raise NonFiniteValueError(
                    f"sample {int(active[i])}: func returned non-finite values at t={float(t_a[i]):.6g} even "
                    f"with the step shrunk to h={float(h_a[i]):.3g}",
                    t=float(t_a[i]),
                    h=float(h_a[i]),
                )
            # write back per-sample controller state
            h_abs = self._put(h_abs, active, h_next, all_active)
            nonfinite = self._put(nonfinite, active, nonfinite_a, all_active)
            previous_ratio = self._put(
                previous_ratio, active, torch.where(accept, ratio.clamp(min=1e-4), prev_a), all_active
            )
            rejected_before = self._put(rejected_before, active, ~accept, all_active)
            self.n_rejected.index_add_(0, active, (~accept).long())
            self.n_accepted.index_add_(0, active, accept.long())
            accepted = accept.nonzero().squeeze(1)
            if accepted.numel() == 0:
                continue
            samples = active[accepted]
            self.step_records.append((samples, h.index_select(0, accepted), t_a.index_select(0, accepted)))
            y_acc = y_new.index_select(0, accepted)
            t_acc, t_old = t_new.index_select(0, accepted), t_a.index_select(0, accepted)
            y = y.index_copy(0, samples, y_acc)
            t = t.index_copy(0, samples, t_acc)
            if tableau.fsal:
                first_stage = first_stage.index_copy(0, samples, stages[-1].index_select(0, accepted))
                known = known.index_fill(0, samples, True)
            else:
                known = known.index_fill(0, samples, False)
            done = t == self.t_bound
            step = _AcceptedStep(
                samples, t_old, h.index_select(0, accepted), y_a.index_select(0, accepted), y_acc,
                [k.index_select(0, accepted) for k in stages],
            )
            first_stage, known = self._emit_outputs(step, times, next_output, first_stage, known)
        return self._assemble_outputs()

    @staticmethod
    def _put(full: Tensor, active: Tensor, values: Tensor, all_active: bool) -> Tensor:
        return values if all_active else full.index_copy(0, active, values)

    def _check_step_budget(self, active: Tensor, t_a: Tensor, h_a: Tensor) -> None:
        steps = (self.n_accepted + self.n_rejected).index_select(0, active)
        over = steps >= self.max_steps
        if bool(over.any()):
            i = int(over.nonzero()[0, 0])
            b, t = int(active[i]), float(t_a[i])
            h = float(h_a[i])
            raise max_steps_error(self.max_steps, self.t0, self.t_bound, t, h, None, f"sample {b}: ")

    def _check_underflow(self, active: Tensor, t_a: Tensor, h_a: Tensor, nonfinite_a: Tensor) -> None:
        resolution = (torch.nextafter(t_a, torch.full_like(t_a, self.direction * math.inf)) - t_a).abs()
        tiny = h_a < 10 * resolution
        if bool(tiny.any()):
            i = int(tiny.nonzero()[0, 0])
            b, t, h = int(active[i]), float(t_a[i]), float(h_a[i])
            if int(nonfinite_a[i]) > 0:
                raise NonFiniteValueError(
                    f"sample {b}: func returned non-finite values at t={t + self.direction * h:.6g}: the "
                    f"step shrank to h={h:.3g} at t={t!r} without getting past them",
                    t=t,
                    h=h,
                )
            raise StepSizeUnderflowError(
                f"sample {b}: step size underflow: h={h:.3g} at t={t!r} is below the resolution of t "
                f"(the problem is probably stiff or singular there)",
                t=t,
                h=h,
            )

    def _emit_outputs(self, step: _AcceptedStep, times: Tensor, next_output: Tensor, first_stage, known):
        """Record every output time passed by this step, per sample, as ``solve`` does (dense output)."""
        n_times, margin = len(self.times), _HIT_TOLERANCE * self.span
        t_end = step.t_old + step.h
        while True:
            pointer = next_output.index_select(0, step.samples)
            target = times[pointer.clamp(max=n_times - 1)]
            pending = (pointer < n_times) & (self.direction * (target - t_end) <= margin)
            rows = pending.nonzero().squeeze(1)
            if rows.numel() == 0:
                return first_stage, known
            target = target.index_select(0, rows)
            hit = (target - t_end.index_select(0, rows)).abs() <= margin
            values = step.y_new.index_select(0, rows)
            interpolate = (~hit).nonzero().squeeze(1)
            if interpolate.numel() > 0:
                sub = rows.index_select(0, interpolate)
                if self.tableau.dense is None:
                    first_stage, known = self._end_derivative(step, sub, first_stage, known)
                dense = self._interpolate(step, sub, target.index_select(0, interpolate))
                values = values.index_copy(0, interpolate, dense)
            samples = step.samples.index_select(0, rows)
            self.output_records.append((pointer.index_select(0, rows), samples, values))
            next_output.index_add_(0, samples, torch.ones_like(samples))

    def _end_derivative(self, step: _AcceptedStep, rows: Tensor, first_stage: Tensor, known: Tensor):
        """f(t_{n+1}, y_{n+1}) for Hermite interpolation, kept as the next step's first stage (like solve)."""
        samples = step.samples.index_select(0, rows)
        missing = (~known.index_select(0, samples)).nonzero().squeeze(1)
        if missing.numel() > 0:
            rows_missing, samples_missing = rows.index_select(0, missing), samples.index_select(0, missing)
            t_end = (step.t_old + step.h).index_select(0, rows_missing)
            fresh = self._evaluate(t_end, step.y_new.index_select(0, rows_missing), samples_missing)
            first_stage = first_stage.index_copy(0, samples_missing, fresh)
            known = known.index_fill(0, samples_missing, True)
        step.f_end = (first_stage, rows)
        return first_stage, known

    def _interpolate(self, step: _AcceptedStep, rows: Tensor, target: Tensor) -> Tensor:
        h = step.h.index_select(0, rows)
        theta = (target - step.t_old.index_select(0, rows)) / h
        y_old = step.y_old.index_select(0, rows)
        stages = [k.index_select(0, rows) for k in step.stages]
        if self.tableau.dense is not None:  # the method's own continuous extension
            out = y_old
            for i, row in enumerate(self.tableau.dense):
                weight = torch.zeros_like(theta)
                power = theta
                for coefficient in row:
                    weight = weight + coefficient * power
                    power = power * theta
                if any(coefficient != 0 for coefficient in row):
                    out = out + self._column(h * weight) * stages[i]
            return out
        # cubic Hermite from y and f at both ends
        full_first_stage, _ = step.f_end
        f_new = full_first_stage.index_select(0, step.samples.index_select(0, rows))
        s = theta
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
        h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
        y_new = step.y_new.index_select(0, rows)
        return (
            y_old * self._column(h00)
            + y_new * self._column(h01)
            + stages[0] * self._column(h * h10)
            + f_new * self._column(h * h11)
        )

    def _assemble_outputs(self) -> Tensor:
        n_times, batch = len(self.times), self.batch
        pointers = torch.cat([p for p, _, _ in self.output_records])
        samples = torch.cat([s for _, s, _ in self.output_records])
        values = torch.cat([v for _, _, v in self.output_records])
        flat = (pointers - 1) * batch + samples
        if flat.numel() != (n_times - 1) * batch or bool((torch.bincount(flat) != 1).any()):
            raise RuntimeError("internal error: per-sample outputs are incomplete")  # pragma: no cover
        order = torch.argsort(flat)
        ys = values.index_select(0, order).view(n_times - 1, batch, *values.shape[1:])
        return torch.cat([self.y0.unsqueeze(0), ys])

    def statistics(self) -> list[SolverStats]:
        stats = [
            SolverStats(nfe=int(n), n_accepted=int(a), n_rejected=int(r))
            for n, a, r in zip(self.nfe.tolist(), self.n_accepted.tolist(), self.n_rejected.tolist())
        ]
        for samples, h, t in self.step_records:
            for b, step_size, time in zip(samples.tolist(), h.tolist(), t.tolist()):
                stats[b].step_sizes.append(step_size)
                stats[b].step_times.append(time)
        return stats


@dataclass
class _AcceptedStep:
    samples: Tensor
    t_old: Tensor
    h: Tensor
    y_old: Tensor
    y_new: Tensor
    stages: list[Tensor]
    f_end: tuple[Tensor, Tensor] | None = None
