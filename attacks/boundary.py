"""Boundary Attack (Brendel, Rauber & Bethge, 2018): a decision-based L2 minimization attack.

Only the model's top-1 decision is used. Starting from an adversarial point ``a`` (the input blended with
uniform noise, or a given starting point), each iteration draws an orthogonal ("spherical") step of relative
size ``delta`` on the sphere of radius ``d = ||x - a||_2`` around the input ``x``, then a "source" step of
relative size ``epsilon`` towards ``x``; the candidate replaces ``a`` if it is adversarial and closer. Both
step sizes adapt per sample to the observed success rates (spherical candidates adversarial ~20-50% of the
time; combined candidates ~10-25%), so the attack follows the decision boundary towards ``x``.

Queries (model evaluations of one sample) are counted per sample, including initialization, and never exceed
``max_queries``. The batch is attacked in lock step without per-sample Python loops; a sample leaves the
batch exactly when its budget is spent. The returned point is the closest adversarial point found, so its
L2 distance never increases across iterations.

Implementation choices (all within the paper's algorithm): one query per iteration for the combined
candidate, plus one spherical check every ``spherical_check_every`` iterations for the statistics (as in
foolbox); the uniform-noise start is bisected towards ``x`` before iterating; samples that noise cannot start
fall back to the closest batch input of an adversarial class; the Gaussian direction of each iteration is
shared by the batch (each sample's directions are still i.i.d. N(0, I), and a sample's trajectory does not
depend on its batch-mates, except through that fallback). Models whose outputs depend on the batch
composition (batch norm in train mode, adaptive ODE solves with a batch-wide error norm) are queried on
sub-batches during initialization and once samples leave.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import (
    Attack,
    AttackResult,
    check_finite_logits,
    check_labels_in_range,
    require_count,
    require_positive,
)

__all__ = ["BoundaryAttack"]


class _QueryCounter:
    """Evaluates the decision ``is_adversarial`` on points of the batch rows ``index``.

    ``__call__`` counts one query per row; :meth:`decide` leaves the bookkeeping to the caller, who adds the
    calls with :meth:`charge`."""

    def __init__(self, model: nn.Module, attack: Attack, shape: tuple[int, ...], labels: Tensor) -> None:
        self.model = model
        self.attack = attack
        self.shape = shape
        self.labels = labels
        self.queries = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)
        self.calls = 0

    @torch.no_grad()
    def __call__(self, points: Tensor, index: Tensor, check: bool = False) -> Tensor:
        labels = self.labels[index]
        adversarial = self.decide(points, labels, check)
        self.charge(index, 1)
        return adversarial

    @torch.no_grad()
    def decide(self, points: Tensor, labels: Tensor, check: bool = False) -> Tensor:
        logits = self.model(points.view(points.shape[0], *self.shape))
        if check:
            check_labels_in_range(logits, labels)
        check_finite_logits(logits)
        self.calls += 1
        self.last_predictions = logits.argmax(dim=1)
        return self.attack.is_adversarial(logits, labels)

    def charge(self, index: Tensor, calls: int) -> None:
        self.queries.index_add_(0, index, torch.full_like(index, calls))


class BoundaryAttack(Attack):
    """Decision-based L2 attack with a per-sample query budget.

    Args:
        max_queries: budget of model evaluations per sample, initialization included.
        steps: optional cap on the number of iterations (each costs one query, plus one every
            ``spherical_check_every`` iterations for the spherical success statistics).
        spherical_step, source_step: initial ``delta`` and ``epsilon`` (relative to the current distance).
        step_adaptation: factor by which a step size grows or shrinks when its success rate is off target.
        adapt_every: iterations between two updates of ``epsilon`` from the candidate success rate.
        spherical_check_every, spherical_window: a spherical candidate is also checked every
            ``spherical_check_every`` iterations; ``delta`` is updated from the last ``spherical_window``
            checks.
        init_attempts: uniform-noise draws tried per sample to find an adversarial start (the paper's
            initialization).
        init_from_batch: for samples that noise did not start, use the closest other input of the batch
            whose (already known) decision is adversarial for them, verified with one query.
        init_search_steps: bisection steps on the blend ``x + t (start - x)`` that bring the start close to
            the boundary (also applied to given ``starting_points``).
        record_history: keep the result's ``stats["l2_history"]`` (iterations x N, NaN once a sample
            stopped).

    Call as ``attack(model, x, y, starting_points=None)``. The result's ``stats`` hold per-sample
    ``queries``, ``l2``, ``linf`` and ``success`` (whether an adversarial point was found; failures are
    returned unchanged).
    """

    minimizes = "l2"

    def __init__(
        self,
        max_queries: int = 1000,
        steps: int | None = None,
        spherical_step: float = 1e-2,
        source_step: float = 1e-2,
        step_adaptation: float = 1.5,
        adapt_every: int = 10,
        spherical_check_every: int = 5,
        spherical_window: int = 10,
        init_attempts: int = 20,
        init_from_batch: bool = True,
        init_search_steps: int = 10,
        record_history: bool = False,
        *,
        targeted: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__(targeted=targeted, seed=seed)
        self.max_queries = require_count("max_queries", max_queries)
        self.steps = None if steps is None else require_count("steps", steps, minimum=0)
        self.spherical_step = require_positive("spherical_step", spherical_step)
        self.source_step = require_positive("source_step", source_step)
        self.step_adaptation = require_positive("step_adaptation", step_adaptation)
        if self.step_adaptation <= 1:
            raise ValueError("step_adaptation must be > 1")
        self.adapt_every = require_count("adapt_every", adapt_every)
        self.spherical_check_every = require_count("spherical_check_every", spherical_check_every)
        self.spherical_window = require_count("spherical_window", spherical_window)
        self.init_attempts = require_count("init_attempts", init_attempts, minimum=0)
        self.init_from_batch = bool(init_from_batch)
        self.init_search_steps = require_count("init_search_steps", init_search_steps, minimum=0)
        self.record_history = bool(record_history)

    # ------------------------------------------------------------------------------------------------------
    def _attack(self, model: nn.Module, x: Tensor, y: Tensor,
                starting_points: Tensor | None = None) -> AttackResult:
        n = x.shape[0]
        shape = tuple(x.shape[1:])
        flat_x = x.reshape(n, -1)
        generator = self.generator(x.device)
        oracle = _QueryCounter(model, self, shape, y)
        everyone = torch.arange(n, device=x.device)

        best = flat_x.clone()
        found = oracle(flat_x, everyone, check=True)  # already adversarial: the input itself, distance 0
        predictions = oracle.last_predictions
        if starting_points is not None:
            start = self._checked_starting_points(starting_points, x, oracle, found)
        else:
            start = self._noise_start(flat_x, oracle, found, generator)
            if self.init_from_batch:
                start = self._batch_start(flat_x, oracle, found, start, predictions)
        searched = self._bisect_towards_input(flat_x, start, oracle, found)
        best[searched.index] = searched.points

        history = self._iterate(flat_x, best, searched.index, oracle, generator)

        success = found.clone()
        success[searched.index] = True
        l2 = torch.where(success, (best - flat_x).norm(dim=1), torch.full_like(best[:, 0], math.inf))
        linf = torch.where(success, (best - flat_x).abs().amax(dim=1), torch.full_like(best[:, 0], math.inf))
        stats = {"queries": oracle.queries, "model_calls": oracle.calls, "success": success, "l2": l2,
                 "linf": linf, "l2_history": history}
        return AttackResult(best.view_as(x), stats)

    # -- initialization -----------------------------------------------------------------------------------
    def _checked_starting_points(self, starting_points: Tensor, x: Tensor, oracle: _QueryCounter,
                                 found: Tensor) -> _Subset:
        if not isinstance(starting_points, Tensor) or starting_points.shape != x.shape:
            raise ValueError(f"starting_points must be a tensor of shape {tuple(x.shape)}")
        if not bool(torch.isfinite(starting_points).all()) or float(starting_points.min()) < 0 \
                or float(starting_points.max()) > 1:
            raise ValueError("starting_points must be finite and lie in [0, 1]")
        todo = (~found).nonzero().squeeze(1)
        points = starting_points.reshape(x.shape[0], -1)[todo].to(x.dtype)
        if todo.numel() and self.max_queries >= 2:
            adversarial = oracle(points, todo)
            if not bool(adversarial.all()):
                bad = todo[~adversarial].tolist()
                raise ValueError(f"starting_points are not adversarial for samples {bad[:10]}")
            return _Subset(todo, points)
        return _Subset(todo[:0], points[:0])

    def _noise_start(self, flat_x: Tensor, oracle: _QueryCounter, found: Tensor,
                     generator: torch.Generator) -> _Subset:
        """Uniform noise ``u ~ U[0,1]^d`` redrawn (for the samples still without one) until adversarial."""
        todo = (~found).nonzero().squeeze(1)
        got_index, got_points = [], []
        for _ in range(min(self.init_attempts, self.max_queries - 1)):
            if todo.numel() == 0:
                break
            noise = torch.rand((todo.numel(), flat_x.shape[1]), generator=generator, device=flat_x.device,
                               dtype=flat_x.dtype)
            adversarial = oracle(noise, todo)
            got_index.append(todo[adversarial])
            got_points.append(noise[adversarial])
            todo = todo[~adversarial]
        if not got_index:
            return _Subset(todo[:0], flat_x[:0])
        return _Subset(torch.cat(got_index), torch.cat(got_points))

    def _batch_start(self, flat_x: Tensor, oracle: _QueryCounter, found: Tensor, start: _Subset,
                     predictions: Tensor) -> _Subset:
        """Closest other batch input whose decision is adversarial for the sample, checked with one query."""
        missing = ~found
        missing[start.index] = False
        missing &= oracle.queries < self.max_queries
        todo = missing.nonzero().squeeze(1)
        if todo.numel() == 0 or flat_x.shape[0] < 2:
            return start
        labels = oracle.labels[todo]
        usable = predictions[None, :] == labels[:, None] if self.targeted else \
            predictions[None, :] != labels[:, None]
        usable[torch.arange(todo.numel(), device=todo.device), todo] = False
        distances = torch.cdist(flat_x[todo], flat_x).masked_fill_(~usable, math.inf)
        nearest = distances.argmin(dim=1)
        has = usable.any(dim=1)
        todo, nearest = todo[has], nearest[has]
        if todo.numel() == 0:
            return start
        points = flat_x[nearest]
        adversarial = oracle(points, todo)
        index = torch.cat([start.index, todo[adversarial]])
        return _Subset(index, torch.cat([start.points, points[adversarial]]))

    def _bisect_towards_input(self, flat_x: Tensor, start: _Subset, oracle: _QueryCounter,
                              found: Tensor) -> _Subset:
        """Bisection on ``t`` in ``x + t (a - x)``: keeps the smallest adversarial ``t``."""
        index = start.index
        if index.numel() == 0:
            return start
        origin, target = flat_x[index], start.points
        low = torch.zeros(index.numel(), 1, device=flat_x.device, dtype=flat_x.dtype)
        high = torch.ones_like(low)
        spare = self.max_queries - int(oracle.queries[index].max())
        for _ in range(min(self.init_search_steps, max(spare, 0))):
            middle = 0.5 * (low + high)
            adversarial = oracle(origin + middle * (target - origin), index)[:, None]
            high = torch.where(adversarial, middle, high)
            low = torch.where(adversarial, low, middle)
        return _Subset(index, origin + high * (target - origin))

    # -- main loop ------------------------------------------------------------------------------------------
    def _iterations_allowed(self, remaining: Tensor) -> Tensor:
        """Largest ``t`` with ``t + floor(t / k) <= remaining`` (``k = spherical_check_every``), at most
        ``steps``."""
        k = self.spherical_check_every
        t = (remaining * k) // (k + 1)
        t = torch.where(t + (t + 1) // k + 1 <= remaining, t + 1, t)  # floor rounding can leave one more step
        t = torch.where(t + t // k > remaining, t - 1, t).clamp_(min=0)
        if self.steps is not None:
            t = t.clamp_(max=self.steps)
        return t

    def _iterate(self, flat_x: Tensor, best: Tensor, index: Tensor, oracle: _QueryCounter,
                 generator: torch.Generator) -> Tensor | None:
        """The search after the initialization; returns the per-iteration L2 history (if recorded)."""
        allowed = self._iterations_allowed(self.max_queries - oracle.queries[index])
        total = int(allowed.max()) if allowed.numel() else 0
        history = None
        if self.record_history:
            history = torch.full((total, flat_x.shape[0]), math.nan, device=flat_x.device, dtype=flat_x.dtype)
        if total == 0:
            return history
        state = _State(flat_x, best, oracle.labels, index, allowed, self.spherical_step, self.source_step)
        state.keep(allowed > 0)
        k, factor, dimension = self.spherical_check_every, self.step_adaptation, flat_x.shape[1]
        spherical_checks, step = 0, 0
        for stop in sorted(set(allowed.tolist()) - {0}):
            calls = 0
            while step < stop:
                step += 1
                # one Gaussian direction per iteration, shared by the batch: each sample's directions are
                # i.i.d. N(0, I) as in the paper, and a sample's trajectory does not depend on its batch-mates
                eta = torch.randn(dimension, generator=generator, device=flat_x.device, dtype=flat_x.dtype)
                candidate, spherical = state.proposals(eta)
                adversarial = oracle.decide(candidate, state.labels)
                state.accept(candidate, adversarial)
                calls += 1
                if step % k == 0:
                    state.spherical_hits += oracle.decide(spherical, state.labels)
                    spherical_checks += 1
                    calls += 1
                if step % self.adapt_every == 0:
                    state.adapt_source_step(self.adapt_every, factor)
                if spherical_checks == self.spherical_window:
                    state.adapt_spherical_step(self.spherical_window, factor)
                    spherical_checks = 0
                if history is not None:
                    history[step - 1, state.index] = state.distance
                self._progress(step / total)
            oracle.charge(state.index, calls)
            best[state.index] = state.adv
            state.keep(state.allowed > stop)
        return history

    def _config(self) -> dict[str, object]:
        return {
            "max_queries": self.max_queries, "steps": self.steps, "spherical_step": self.spherical_step,
            "source_step": self.source_step, "step_adaptation": self.step_adaptation,
            "adapt_every": self.adapt_every, "spherical_check_every": self.spherical_check_every,
            "spherical_window": self.spherical_window, "init_attempts": self.init_attempts,
            "init_from_batch": self.init_from_batch,
            "init_search_steps": self.init_search_steps, **super()._config(),
        }


class _State:
    """Per-sample state of the samples still iterating (rows ``index`` of the batch), kept flat ``(n, d)``."""

    def __init__(self, flat_x: Tensor, best: Tensor, labels: Tensor, index: Tensor, allowed: Tensor,
                 delta: float, epsilon: float) -> None:
        self.index, self.allowed, self.labels = index, allowed, labels[index]
        self.originals, self.adv = flat_x[index], best[index]
        self.source = self.originals - self.adv
        self.distance = torch.linalg.vector_norm(self.source, dim=1)
        self.delta = torch.full_like(self.distance, delta)
        self.epsilon = torch.full_like(self.distance, epsilon)
        self.candidate_hits = torch.zeros_like(self.distance)
        self.spherical_hits = torch.zeros_like(self.distance)
        self._sphere_factors()

    def keep(self, rows: Tensor) -> None:
        if bool(rows.all()):
            return
        rows = rows.nonzero().squeeze(1)
        for name in ("index", "allowed", "labels", "originals", "adv", "source", "distance", "delta",
                     "epsilon", "candidate_hits", "spherical_hits", "_inverse_norm", "_delta_over_norm"):
            setattr(self, name, getattr(self, name)[rows])

    def _sphere_factors(self) -> None:
        # rotation by atan(delta) keeps the distance: x - (source - eta) / sqrt(1 + delta^2), |eta| = delta d
        self._inverse_norm = torch.rsqrt(1 + self.delta * self.delta)[:, None]
        self._delta_over_norm = self.delta * self._inverse_norm[:, 0]

    def proposals(self, eta: Tensor) -> tuple[Tensor, Tensor]:
        """Spherical candidate (rotated by ``atan(delta)`` on the sphere of radius ``d`` around ``x``, clipped
        to [0, 1]) and the candidate after a source step of ``epsilon * d`` towards ``x`` (corrected for the
        clipping's deviation from the sphere, as in the reference implementation)."""
        source, distance = self.source, self.distance
        coefficient = (source @ eta) / (distance * distance)
        orthogonal = torch.addcmul(eta, coefficient[:, None], source, value=-1.0)
        orthogonal_norm = torch.linalg.vector_norm(orthogonal, dim=1).clamp_min(1e-30)
        scale = self._delta_over_norm * distance / orthogonal_norm
        spherical = torch.addcmul(self.originals, source, self._inverse_norm, value=-1.0)
        spherical = torch.addcmul(spherical, orthogonal, scale[:, None]).clamp_(0.0, 1.0)
        towards = self.originals - spherical
        towards_norm = torch.linalg.vector_norm(towards, dim=1)
        length = (self.epsilon * distance + towards_norm - distance).clamp_(min=0.0) / towards_norm
        candidate = torch.addcmul(spherical, towards, length[:, None]).clamp_(0.0, 1.0)
        return candidate, spherical

    def accept(self, candidate: Tensor, adversarial: Tensor) -> None:
        """Move to ``candidate`` where it is adversarial and strictly closer (so the distance never grows)."""
        candidate_source = self.originals - candidate
        candidate_distance = torch.linalg.vector_norm(candidate_source, dim=1)
        accepted = adversarial & (candidate_distance < self.distance)
        weight = accepted.to(candidate.dtype)[:, None]
        self.adv = torch.lerp(self.adv, candidate, weight)  # exact at weight 0 and 1
        self.source = torch.lerp(self.source, candidate_source, weight)
        self.distance = torch.where(accepted, candidate_distance, self.distance)
        self.candidate_hits += adversarial

    def adapt_source_step(self, window: int, factor: float) -> None:
        """Aim at 10-25 % adversarial candidates: grow ``epsilon`` above, shrink it below (capped at 0.5)."""
        rate = self.candidate_hits / window
        self.epsilon = torch.where(rate > 0.25, self.epsilon * factor, self.epsilon)
        self.epsilon = torch.where(rate < 0.1, self.epsilon / factor, self.epsilon).clamp_(max=0.5)
        self.candidate_hits.zero_()

    def adapt_spherical_step(self, window: int, factor: float) -> None:
        """Aim at 20-50 % adversarial spherical candidates; ``epsilon`` follows ``delta``."""
        rate = self.spherical_hits / window
        change = torch.where(rate > 0.5, factor, torch.where(rate < 0.2, 1.0 / factor, 1.0))
        self.delta = self.delta * change
        self.epsilon = (self.epsilon * change).clamp_(max=0.5)
        self.spherical_hits.zero_()
        self._sphere_factors()


class _Subset:
    """Rows ``index`` of the batch and their flattened points."""

    def __init__(self, index: Tensor, points: Tensor) -> None:
        self.index = index
        self.points = points
