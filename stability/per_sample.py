"""Per-sample adaptive step control: the leading dimension of y0 holds B independent problems.

Every sample has its own time, step size, controller memory, accept/reject decision, dense output and
statistics (t and h of shape [B]); the step, the error norm, the controller and the interpolants are the
shared ones applied row by row, and each iteration evaluates f on the samples still integrating only. So
sample b's trajectory and NFE are those of solving it alone, provided f treats samples independently
(GroupNorm and convolutions do, train-mode BatchNorm does not). ``func(t, y)`` receives t of shape [B_active]
(broadcast it as ``t[:, None]``). Fixed steps, the same for every sample, run as one shared solve.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from stability.base import TimeVectorField
from stability.checks import (
    check_derivative,
    check_first_step,
    check_low_precision,
    check_norm_value,
    evaluate_checked,
    max_steps_error,
    min_step_error,
    nonfinite_rejections_error,
    time_dtype,
    underflow_error,
)
from stability.errors import ODEInputError
from stability.linearization import SampleCounts, StiffStats
from stability.methods import STIFF, TABLEAUX
from stability.options import SolverOptions
from stability.runge_kutta import interpolant, rk_step
from stability.solution import HIT_TOLERANCE, SolverStats, output_reached
from stability.status import Status, status_of
from stability.step_control import MAX_NONFINITE_REJECTIONS, STRETCH, error_norm, initial_step, stiffness
from stability.stiff_step import StiffStep


class PerSampleStepper:
    """The integration state of B independent samples; ``advance()`` is one vectorised attempt (accepted or
    rejected per sample) for the samples still integrating, returning the output values it produced."""

    def __init__(self, func: TimeVectorField, y0: Tensor, times: list[float], options: SolverOptions) -> None:
        check_low_precision(y0.dtype, options.rtol)
        self.func, self.options, self.times = func, options, times
        self.tableau = TABLEAUX.get(options.method) or STIFF[options.method]
        # The step: the explicit RK step, or a stiff method's (Jacobians per sample; ``stiff_counts`` counts
        # its linear algebra per sample)
        self.stiff = options.method not in TABLEAUX
        self.stiff_counts = SampleCounts(y0.shape[0], y0.device) if self.stiff else None
        self.step = StiffStep(func, options, per_sample=True) if self.stiff else rk_step
        self.norm = error_norm(options.norm, per_sample=True)
        self.own_norm = options.norm not in (None, "rms")  # the caller's function (blamed for a NaN)
        self.batch, self.time_dtype = y0.shape[0], time_dtype(y0, options.time_dtype)
        self.rtol, self.atol = (self._per_sample_tolerance(name, getattr(options, name), y0.device)
                                for name in ("rtol", "atol"))
        self.last_output: tuple[Tensor | None, int] = (None, 0)  # func's previous output and its version
        self.t0, self.t_bound = times[0], times[-1]
        self.direction = 1.0 if self.t_bound > self.t0 else -1.0
        self.span = abs(self.t_bound - self.t0)
        batch, f64 = self.batch, dict(dtype=torch.float64, device=y0.device)
        counters, flags = dict(dtype=torch.int64, device=y0.device), dict(dtype=torch.bool, device=y0.device)
        self.nfe, self.n_accepted, self.n_rejected, self.nonfinite = (
            torch.zeros(batch, **counters) for _ in range(4))
        self.step_records: list[tuple[Tensor, Tensor, Tensor]] = []  # (samples, h, t) of accepted steps
        self.output_records: list[tuple[Tensor, Tensor]] = []  # (output index, samples) of each value
        everyone = torch.arange(batch, device=y0.device)
        y0 = y0.clone()  # func works on the stepper's copy: an in-place change is refused, y0 left unchanged
        self.t, self.y, self.y0 = torch.full((batch,), self.t0, **f64), y0, y0
        self.first_stage = self._evaluate(self.t, y0, everyone)  # f(t, y) of each sample, when ``known``
        check_derivative(self.first_stage, y0, self.t0)
        first_step = check_first_step(options.first_step, self.span)
        if first_step is not None:
            h_abs = torch.full((batch,), first_step, **f64)
        else:
            h_abs = initial_step(lambda s, z: self._evaluate(s, z, everyone), self.t0, y0, self.first_stage,
                                 self.direction, self.tableau.error_order, self.rtol, self.atol,
                                 self.span, per_sample=True)
        self.h_abs = h_abs.clamp(max=options.max_step)
        self.known, self.done = torch.ones(batch, **flags), torch.zeros(batch, **flags)
        self.rejected_before = torch.zeros(batch, **flags)  # in the current step
        self.memory = options.controller.initial_memory_tensor(torch.ones(batch, **f64))
        self.times_tensor = torch.tensor(times, **f64)
        self.next_output = torch.ones(batch, **counters)
        # Samples that end before t_bound (a failure with throw=False, a terminal event) and why.
        self.stopped, self.status = torch.zeros(batch, **flags), torch.zeros(batch, **counters)
        self.messages: list[str | None] = [None] * batch
        # (samples, t_old, h, y_old, y_new, stages) of the last attempt's accepted rows, kept only for a
        # reader (events): holding a step's stages between checkpointed chunks would raise the memory peak
        self.keep_last_step, self.last_step = False, None

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def _per_sample_tolerance(self, name: str, value, device) -> float | Tensor:
        """rtol or atol: a number, or a float64 tensor [B] with one value per sample (checked against B)."""
        if not isinstance(value, Tensor):
            return value
        if value.shape != (self.batch,):
            raise ODEInputError(f"per-sample {name} has {value.numel()} values, but y0 holds {self.batch} "
                                f"samples along dim 0")
        return value.to(device)

    def _evaluate(self, t: Tensor, y: Tensor, samples: Tensor) -> Tensor:
        self.nfe.index_add_(0, samples, torch.ones_like(samples))
        f, self.last_output = evaluate_checked(self.func, t.to(self.time_dtype), y, None, self.last_output)
        return f

    def advance(self) -> list[Tensor]:
        options, tableau = self.options, self.tableau
        active = (~self.done).nonzero().squeeze(1)
        if active.numel() == self.batch:  # rows of the active samples and back (no copies when all are)
            take, put = (lambda x: x), (lambda full, values: values)
        else:
            take = lambda x: x.index_select(0, active)  # noqa: E731
            put = lambda full, values: full.index_copy(0, active, values)  # noqa: E731

        self.last_step = None
        t_a, y_a, h_a = take(self.t), take(self.y), take(self.h_abs)
        forced = None
        if options.min_step > 0 and bool((h_a < options.min_step).any()):
            forced = h_a < options.min_step  # force_min_step: these step at min_step, accepted (finite error)
            below_error = lambda i, t, h, sample: min_step_error(options.min_step, t, h, sample)  # noqa: E731
            if not options.force_min_step and self._fail_where(forced, active, t_a, h_a, below_error):
                return []
            h_a = h_a.clamp(min=options.min_step)
        over = (self.n_accepted + self.n_rejected).index_select(0, active) >= options.max_steps
        if self._fail_where(over, active, t_a, h_a, lambda i, t, h, sample: max_steps_error(
                options.max_steps, self.t0, self.t_bound, t, h, self._stiffness(int(active[i]), h), sample)):
            return []
        t_new = t_a + self.direction * h_a
        ends = self.direction * (t_new + STRETCH * self.direction * h_a - self.t_bound) >= 0
        overshoot = self.direction * (t_new - self.t_bound) >= 0
        ends &= overshoot | ((self.t_bound - t_a).abs() <= options.max_step)  # stretch within max_step
        t_new = torch.where(ends, torch.full_like(t_new, self.t_bound), t_new)  # clipped or stretched
        h = t_new - t_a
        h_a = h.abs()
        resolution = (torch.nextafter(t_a, torch.full_like(t_a, self.direction * math.inf)) - t_a).abs()
        nonfinite_a = take(self.nonfinite)
        if self._fail_where(h_a < 10 * resolution, active, t_a, h_a, lambda i, t, h, sample: underflow_error(
                t, h, self.direction, int(nonfinite_a[i]) > 0, sample)):
            return []
        stage0 = take(self.first_stage)
        need = (~take(self.known)).nonzero().squeeze(1)
        if need.numel() > 0:
            fresh = self._evaluate(t_a.index_select(0, need), y_a.index_select(0, need), active[need])
            stage0 = stage0.index_copy(0, need, fresh)
        if self.stiff:
            self.stiff_counts.active = active
            step = self.step(lambda s, z: self._evaluate(s, z, active), t_a, y_a, h, tableau, stage0,
                             self.stiff_counts)
        else:
            step = self.step(lambda s, z: self._evaluate(s, z, active), t_a, y_a, h, tableau, stage0)
        rtol, atol = (take(x) if isinstance(x, Tensor) else x for x in (self.rtol, self.atol))
        ratio = self.norm(step.error, y_a, step.y, rtol, atol)
        accept = ratio <= 1.0
        if forced is not None:  # force_min_step: a step at min_step is accepted whatever its finite error
            accept |= forced & torch.isfinite(ratio)
        if self.own_norm and not bool(torch.isfinite(ratio).all()):
            i = int((~torch.isfinite(ratio)).nonzero()[0, 0])
            check_norm_value(float(ratio[i]), step.error[i], step.y[i], None, f"sample {int(active[i])}: ")
        memory = _map(take, self.memory)
        factor = options.controller.factors(ratio, memory, tableau.error_order, take(self.rejected_before))
        h_next = torch.where(accept, (h_a * factor).clamp(max=options.max_step), h_a * factor)
        nonfinite = torch.where(accept | torch.isfinite(ratio), 0, nonfinite_a + 1)
        self._fail_where(nonfinite >= MAX_NONFINITE_REJECTIONS, active, t_a, h_a,
                         lambda i, t, h, sample: nonfinite_rejections_error(t, h, sample))
        self.h_abs = put(self.h_abs, h_next)
        self.nonfinite = put(self.nonfinite, nonfinite)
        self.memory = _map2(put, self.memory, options.controller.remember_where(accept, memory, ratio))
        self.rejected_before = put(self.rejected_before, ~accept)
        self.n_rejected.index_add_(0, active, (~accept).long())
        self.n_accepted.index_add_(0, active, accept.long())
        rows = accept.nonzero().squeeze(1)
        if rows.numel() == 0:
            return []
        everyone = rows.numel() == self.batch
        if everyone:  # every sample active and accepted: no copies of the state
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
            self.first_stage = stages[-1] if everyone else self.first_stage.index_copy(0, samples, stages[-1])
        self.known = self.known.index_fill(0, samples, tableau.fsal)
        self.done = (self.t == self.t_bound) | self.stopped
        if self.keep_last_step:
            self.last_step = (samples, t_old, h_acc, y_old, y_acc, stages)
        return self._outputs(samples, t_old, h_acc, y_old, y_acc, stages)

    def _fail_where(self, mask: Tensor, active: Tensor, t_a: Tensor, h_a: Tensor, error) -> bool:
        """Where ``mask`` (active rows i, samples b): raise ``error(i, t, h, "sample b: ")`` of the first one,
        or with ``throw=False`` stop each such sample with its status code and message; whether any failed."""
        if not bool(mask.any()):
            return False
        for i in mask.nonzero().squeeze(1).tolist():
            failure = error(i, float(t_a[i]), float(h_a[i]), f"sample {int(active[i])}: ")
            if self.options.throw:
                raise failure
            self.messages[int(active[i])] = str(failure)
            self.stop(active[i : i + 1], status_of(failure))
        return True

    def stop(self, samples: Tensor, status: Status) -> None:
        """End the integration of ``samples`` here (their outputs from now on stay missing: NaN)."""
        self.stopped = self.stopped.index_fill(0, samples, True)
        self.status = self.status.index_fill(0, samples, int(status))
        self.done = self.done | self.stopped

    def _stiffness(self, b: int, h_abs: float) -> float | None:
        """``step_control.stiffness`` of one probe step of sample b with step h_abs (for an error message)."""
        if self.options.method not in TABLEAUX:  # a stiff method already: no hint to give
            return None
        y, h = self.y[b : b + 1].detach(), self.direction * h_abs
        with torch.no_grad():
            fun = lambda s, z: self.func(s.to(self.time_dtype), z)  # noqa: E731
            step = rk_step(fun, self.t[b : b + 1], y, h, self.tableau)
        return stiffness(y, step.stages, self.tableau, h)

    def _outputs(self, samples, t_old, h, y_old, y_new, stages) -> list[Tensor]:
        """Every output time passed by the accepted steps of ``samples``: the step end, or dense output."""
        n_times, margin, produced, t_end = len(self.times), HIT_TOLERANCE * self.span, [], t_old + h
        while True:
            pointer = self.next_output.index_select(0, samples)
            target = self.times_tensor[pointer.clamp(max=n_times - 1)]
            reached, at_end = output_reached(target, t_end, self.direction, margin)
            rows = ((pointer < n_times) & reached).nonzero().squeeze(1)
            if rows.numel() == 0:
                return produced
            target, values = target.index_select(0, rows), y_new.index_select(0, rows)
            between = (~at_end.index_select(0, rows)).nonzero().squeeze(1)
            if between.numel() > 0:
                sub = rows.index_select(0, between)
                dense = self._interpolant(samples.index_select(0, sub), t_old, h, y_old, y_new, stages, sub)
                values = values.index_copy(0, between, dense(target.index_select(0, between)))
            rows_samples = samples.index_select(0, rows)
            self.output_records.append((pointer.index_select(0, rows), rows_samples))
            produced.append(values)
            self.next_output.index_add_(0, rows_samples, torch.ones_like(rows_samples))

    def _interpolant(self, samples, t_old, h, y_old, y_new, stages, rows):
        pick = lambda x: x.index_select(0, rows)  # noqa: E731

        def derivative_at_end() -> Tensor:  # f(t_{n+1}, y_{n+1}), kept as the next step's first stage
            missing = (~self.known.index_select(0, samples)).nonzero().squeeze(1)
            if missing.numel() > 0:
                lost = samples.index_select(0, missing)
                t_end = (t_old + h).index_select(0, rows).index_select(0, missing)
                fresh = self._evaluate(t_end, pick(y_new).index_select(0, missing), lost)
                self.first_stage = self.first_stage.index_copy(0, lost, fresh)
                self.known = self.known.index_fill(0, lost, True)
            return self.first_stage.index_select(0, samples)

        rows_stages = [pick(k) for k in stages]
        return interpolant(self.tableau, pick(t_old), pick(h), pick(y_old), pick(y_new), rows_stages,
                           derivative_at_end)

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
        other.messages = list(self.messages)
        if self.stiff:
            other.stiff_counts = self.stiff_counts.clone()
        other.last_output = (None, 0)
        return other

    def position(self) -> tuple:
        return tuple(self.t.tolist()), int((self.n_accepted + self.n_rejected).sum())

    def assemble(self, y0: Tensor, values: list[Tensor]) -> Tensor:
        y0 = self.y0  # the stepper's copy: ys[0], so y0's gradient sums in one place as before the copy
        n_times, batch = len(self.times), self.batch
        if not self.output_records:  # every sample stopped before its first output time
            return torch.cat([y0.unsqueeze(0), torch.full((n_times - 1, *y0.shape), math.nan).to(y0)])
        pointers = torch.cat([p for p, _ in self.output_records])
        samples = torch.cat([s for _, s in self.output_records])
        flat = (pointers - 1) * batch + samples
        if flat.numel() != (n_times - 1) * batch or bool((torch.bincount(flat) != 1).any()):
            if not bool(self.stopped.any()):
                raise RuntimeError("internal error: per-sample outputs are incomplete")  # pragma: no cover
            # stopped samples: the outputs they never reached are NaN
            missing = y0.new_full(((n_times - 1) * batch, *y0.shape[1:]), math.nan)
            ys = missing.index_copy(0, flat, torch.cat(values))
        else:
            ys = torch.cat(values).index_select(0, torch.argsort(flat))
        return torch.cat([y0.unsqueeze(0), ys.view(n_times - 1, batch, *y0.shape[1:])])

    def outcome(self) -> tuple[Tensor, Tensor, list[str | None]]:
        """(status [B], t_reached [B], messages) of every sample."""
        return self.status.cpu(), self.t.cpu(), list(self.messages)

    def statistics(self) -> list[SolverStats]:
        kind = StiffStats if self.stiff else SolverStats
        stats = [kind(nfe=int(n), n_accepted=int(a), n_rejected=int(r))
                 for n, a, r in zip(self.nfe.tolist(), self.n_accepted.tolist(), self.n_rejected.tolist())]
        if self.stiff:
            for b, sample in enumerate(stats):
                for name, value in self.stiff_counts.sample(b).items():
                    setattr(sample, name, value)
        for samples, h, t in self.step_records:
            for b, step_size, time in zip(samples.tolist(), h.tolist(), t.tolist()):
                stats[b].step_sizes.append(step_size)
                stats[b].step_times.append(time)
        return stats


def _map(function, memory):
    """``function`` applied to a controller's per-sample memory: a tensor [B] or a tuple of them."""
    return tuple(function(x) for x in memory) if isinstance(memory, tuple) else function(memory)


def _map2(function, memory, values):
    if isinstance(memory, tuple):
        return tuple(function(x, v) for x, v in zip(memory, values))
    return function(memory, values)
