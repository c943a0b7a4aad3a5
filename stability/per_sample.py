"""Per-sample adaptive step control: the leading dimension of y0 holds independent problems.

A shared (whole-batch) adaptive solve — ``solve``'s default, and torchdiffeq's only mode — takes one step size
for the batch from one error norm over all samples, so sample i's prediction depends on which other samples
share its batch (and every sample pays for the stiffest). Here every sample has its own time, step size,
controller memory, accept/reject decision, dense output and statistics: t and h have shape [B] and the step,
the error norm, the controller and the interpolants are the shared ones (``rk_step``,
``error_ratio_per_sample``, ``PIController.factors``, ``interpolation``) applied row by row; each iteration
runs f only on the samples still integrating. So sample i's trajectory and NFE are those of solving it alone,
in any batch — provided f itself treats samples independently (GroupNorm, LayerNorm, convolutions and
eval-mode BatchNorm do; train-mode BatchNorm or anything else that mixes samples breaks that independence).

Convention: in this mode ``func(t, y)`` receives t as a tensor of shape [B_active] (one time per row of y;
autonomous fields ignore it, non-autonomous ones broadcast it, e.g. ``t[:, None]``). For fixed-step methods
the steps are the same for every sample anyway; t is then the common time expanded to [B].
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor

from stability.checks import (
    check_derivative,
    check_low_precision,
    check_output,
    max_steps_error,
    nonfinite_rejections_error,
    time_dtype,
    underflow_error,
)
from stability.errors import ODEInputError
from stability.interpolation import HermiteInterpolant, RungeKuttaInterpolant
from stability.methods import TABLEAUX
from stability.options import SolverOptions
from stability.runge_kutta import rk_step
from stability.solution import HIT_TOLERANCE, SolverStats
from stability.step_control import MAX_NONFINITE_REJECTIONS, STRETCH, error_ratio_per_sample, initial_step

TimeVectorField = Callable[[Tensor, Tensor], Tensor]

__all__ = ["PerSampleStepper"]


class PerSampleStepper:
    """The integration state of B independent samples; ``advance()`` is one vectorised attempt (accepted or
    rejected per sample) for the samples still integrating, returning the output values it produced."""

    def __init__(self, func: TimeVectorField, y0: Tensor, times: list[float], options: SolverOptions) -> None:
        if y0.dim() < 1:
            raise ODEInputError("per-sample mode needs a leading batch dimension in y0")
        check_low_precision(y0.dtype, options.rtol)
        self.func, self.options, self.times = func, options, times
        self.tableau = TABLEAUX[options.method]
        self.norm = options.norm or error_ratio_per_sample
        self.batch, self.device, self.time_dtype = y0.shape[0], y0.device, time_dtype(y0)
        self.t0, self.t_bound = times[0], times[-1]
        self.direction = 1.0 if self.t_bound > self.t0 else -1.0
        self.span = abs(self.t_bound - self.t0)
        batch, f64 = self.batch, dict(dtype=torch.float64, device=self.device)
        flags = dict(dtype=torch.bool, device=self.device)
        counters = dict(dtype=torch.int64, device=self.device)
        self.nfe = torch.zeros(batch, **counters)
        self.n_accepted = torch.zeros(batch, **counters)
        self.n_rejected = torch.zeros(batch, **counters)
        self.step_records: list[tuple[Tensor, Tensor, Tensor]] = []  # (samples, h, t) of accepted steps
        self.output_records: list[tuple[Tensor, Tensor]] = []  # (output index, samples) of each value
        everyone = torch.arange(batch, device=self.device)
        self.t = torch.full((batch,), self.t0, **f64)
        self.y = y0
        self.first_stage = self._evaluate(self.t, y0, everyone)  # f(t, y) of each sample, when ``known``
        check_derivative(self.first_stage, y0, self.t0)
        if options.first_step is not None:
            if not options.first_step <= self.span:
                raise ODEInputError(f"first_step must lie in (0, {self.span}], got {options.first_step}")
            h_abs = torch.full((batch,), float(options.first_step), **f64)
        else:
            h_abs = initial_step(lambda s, z: self._evaluate(s, z, everyone), self.t0, y0, self.first_stage,
                                 self.direction, self.tableau.error_order, options.rtol, options.atol,
                                 self.span, per_sample=True)
        self.h_abs = h_abs.clamp(max=options.max_step)
        self.known = torch.ones(batch, **flags)
        self.previous_ratio = torch.ones(batch, **f64)
        self.rejected_before = torch.zeros(batch, **flags)  # in the current step
        self.nonfinite = torch.zeros(batch, **counters)
        self.done = torch.zeros(batch, **flags)
        self.times_tensor = torch.tensor(times, **f64)
        self.next_output = torch.ones(batch, **counters)

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def _evaluate(self, t: Tensor, y: Tensor, samples: Tensor) -> Tensor:
        self.nfe.index_add_(0, samples, torch.ones_like(samples))
        f = self.func(t.to(self.time_dtype), y)
        if not isinstance(f, Tensor) or f.shape != y.shape or f.dtype != y.dtype:
            check_output(f, y, None)
        return f

    def advance(self) -> list[Tensor]:
        options, tableau = self.options, self.tableau
        active = (~self.done).nonzero().squeeze(1)
        all_active = active.numel() == self.batch

        def take(x: Tensor) -> Tensor:
            return x if all_active else x.index_select(0, active)

        def put(full: Tensor, values: Tensor) -> Tensor:
            return values if all_active else full.index_copy(0, active, values)

        t_a, y_a, h_a = take(self.t), take(self.y), take(self.h_abs)
        self._check_step_budget(active, t_a, h_a)
        t_new = t_a + self.direction * h_a
        ends = self.direction * (t_new + STRETCH * self.direction * h_a - self.t_bound) >= 0
        overshoot = self.direction * (t_new - self.t_bound) >= 0
        ends &= overshoot | ((self.t_bound - t_a).abs() <= options.max_step)  # stretch within max_step
        t_new = torch.where(ends, torch.full_like(t_new, self.t_bound), t_new)  # clipped or stretched
        h = t_new - t_a
        h_a = h.abs()
        self._check_underflow(active, t_a, h_a, take(self.nonfinite))
        stage0 = take(self.first_stage)
        need = (~take(self.known)).nonzero().squeeze(1)
        if need.numel() > 0:
            fresh = self._evaluate(t_a.index_select(0, need), y_a.index_select(0, need), active[need])
            stage0 = stage0.index_copy(0, need, fresh)
        step = rk_step(lambda s, z: self._evaluate(s, z, active), t_a, y_a, h, tableau, stage0)
        ratio = self.norm(step.error, y_a, step.y, options.rtol, options.atol)
        accept = ratio <= 1.0
        previous = take(self.previous_ratio)
        factor = options.controller.factors(ratio, previous, tableau.error_order, take(self.rejected_before))
        h_next = torch.where(accept, (h_a * factor).clamp(max=options.max_step), h_a * factor)
        nonfinite = torch.where(accept | torch.isfinite(ratio), 0, take(self.nonfinite) + 1)
        if bool((nonfinite >= MAX_NONFINITE_REJECTIONS).any()):
            i = int((nonfinite >= MAX_NONFINITE_REJECTIONS).nonzero()[0, 0])
            raise nonfinite_rejections_error(float(t_a[i]), float(h_a[i]), f"sample {int(active[i])}: ")
        self.h_abs = put(self.h_abs, h_next)
        self.nonfinite = put(self.nonfinite, nonfinite)
        self.previous_ratio = put(self.previous_ratio, torch.where(accept, ratio.clamp(min=1e-4), previous))
        self.rejected_before = put(self.rejected_before, ~accept)
        self.n_rejected.index_add_(0, active, (~accept).long())
        self.n_accepted.index_add_(0, active, accept.long())
        rows = accept.nonzero().squeeze(1)
        if rows.numel() == 0:
            return []
        if rows.numel() == self.batch:  # every sample active and accepted: no copies of the state
            samples, t_old, h_acc, y_old, y_acc, stages = active, t_a, h, y_a, step.y, step.stages
            self.y, self.t = y_acc, t_new
        else:
            samples = active[rows]
            t_old, h_acc = t_a.index_select(0, rows), h.index_select(0, rows)
            y_old, y_acc = y_a.index_select(0, rows), step.y.index_select(0, rows)
            stages = [k.index_select(0, rows) for k in step.stages]
            self.y = self.y.index_copy(0, samples, y_acc)
            self.t = self.t.index_copy(0, samples, t_new.index_select(0, rows))
        self.step_records.append((samples, h_acc, t_old))
        if tableau.fsal:
            everyone = rows.numel() == self.batch
            self.first_stage = stages[-1] if everyone else self.first_stage.index_copy(0, samples, stages[-1])
            self.known = self.known.index_fill(0, samples, True)
        else:
            self.known = self.known.index_fill(0, samples, False)
        self.done = self.t == self.t_bound
        return self._outputs(samples, t_old, h_acc, y_old, y_acc, stages)

    def _outputs(self, samples, t_old, h, y_old, y_new, stages) -> list[Tensor]:
        """Every output time passed by the accepted steps of ``samples``: the step end, or dense output."""
        n_times, margin, produced = len(self.times), HIT_TOLERANCE * self.span, []
        t_end = t_old + h
        while True:
            pointer = self.next_output.index_select(0, samples)
            target = self.times_tensor[pointer.clamp(max=n_times - 1)]
            rows = ((pointer < n_times) & (self.direction * (target - t_end) <= margin)).nonzero().squeeze(1)
            if rows.numel() == 0:
                return produced
            target = target.index_select(0, rows)
            values = y_new.index_select(0, rows)
            between = ((target - t_end.index_select(0, rows)).abs() > margin).nonzero().squeeze(1)
            if between.numel() > 0:
                sub = rows.index_select(0, between)
                dense = self._interpolant(samples.index_select(0, sub), t_old, h, y_old, y_new, stages, sub)
                values = values.index_copy(0, between, dense(target.index_select(0, between)))
            rows_samples = samples.index_select(0, rows)
            self.output_records.append((pointer.index_select(0, rows), rows_samples))
            produced.append(values)
            self.next_output.index_add_(0, rows_samples, torch.ones_like(rows_samples))

    def _interpolant(self, samples, t_old, h, y_old, y_new, stages, rows):
        def pick(x: Tensor) -> Tensor:
            return x.index_select(0, rows)

        if self.tableau.dense is not None:  # the method's own continuous extension
            return RungeKuttaInterpolant(
                self.tableau, pick(t_old), pick(h), pick(y_old), [pick(k) for k in stages]
            )

        def derivative_at_end() -> Tensor:  # f(t_{n+1}, y_{n+1}), kept as the next step's first stage
            missing = (~self.known.index_select(0, samples)).nonzero().squeeze(1)
            if missing.numel() > 0:
                lost = samples.index_select(0, missing)
                t_end = (t_old + h).index_select(0, rows).index_select(0, missing)
                fresh = self._evaluate(t_end, pick(y_new).index_select(0, missing), lost)
                self.first_stage = self.first_stage.index_copy(0, lost, fresh)
                self.known = self.known.index_fill(0, lost, True)
            return self.first_stage.index_select(0, samples)

        return HermiteInterpolant(
            pick(t_old), pick(h), pick(y_old), pick(y_new), pick(stages[0]), derivative_at_end
        )

    def _check_step_budget(self, active: Tensor, t_a: Tensor, h_a: Tensor) -> None:
        over = (self.n_accepted + self.n_rejected).index_select(0, active) >= self.options.max_steps
        if bool(over.any()):
            i = int(over.nonzero()[0, 0])
            b, t, h = int(active[i]), float(t_a[i]), float(h_a[i])
            raise max_steps_error(self.options.max_steps, self.t0, self.t_bound, t, h, None, f"sample {b}: ")

    def _check_underflow(self, active: Tensor, t_a: Tensor, h_a: Tensor, nonfinite_a: Tensor) -> None:
        resolution = (torch.nextafter(t_a, torch.full_like(t_a, self.direction * math.inf)) - t_a).abs()
        tiny = h_a < 10 * resolution
        if bool(tiny.any()):
            i = int(tiny.nonzero()[0, 0])
            b, t, h = int(active[i]), float(t_a[i]), float(h_a[i])
            raise underflow_error(t, h, self.direction, int(nonfinite_a[i]) > 0, f"sample {b}: ")

    # --- the stepper protocol of ``stability.integrate`` ---------------------------------------------
    def state(self) -> tuple[Tensor, ...]:
        return (self.y,)

    def set_state(self, state: tuple[Tensor, ...]) -> None:
        (self.y,) = state

    def snapshot(self) -> PerSampleStepper:
        """A copy that re-runs from here (the counters are updated in place, so they are cloned)."""
        other = copy.copy(self)
        for name in ("nfe", "n_accepted", "n_rejected", "next_output"):
            setattr(other, name, getattr(self, name).clone())
        other.step_records, other.output_records = list(self.step_records), list(self.output_records)
        return other

    def position(self) -> tuple:
        return tuple(self.t.tolist()), int((self.n_accepted + self.n_rejected).sum())

    def assemble(self, y0: Tensor, values: list[Tensor]) -> Tensor:
        n_times, batch = len(self.times), self.batch
        if not values:
            return y0.unsqueeze(0)
        pointers = torch.cat([p for p, _ in self.output_records])
        samples = torch.cat([s for _, s in self.output_records])
        flat = (pointers - 1) * batch + samples
        if flat.numel() != (n_times - 1) * batch or bool((torch.bincount(flat) != 1).any()):
            raise RuntimeError("internal error: per-sample outputs are incomplete")  # pragma: no cover
        ys = torch.cat(values).index_select(0, torch.argsort(flat))
        return torch.cat([y0.unsqueeze(0), ys.view(n_times - 1, batch, *y0.shape[1:])])

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
