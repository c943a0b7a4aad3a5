"""Propagate y0 and y0 + ε through the actual scheme; compare |e_n| = |y'_n − y_n| with the bound, per step.

The bound is the product of per-step Lipschitz factors (``bounds``), so any sequence of maps with certified
factors can be checked: a fixed-step ``stability`` scheme on one f, a stack of residual blocks with their own
K_i, or the accepted steps of an adaptive run replayed as a fixed grid. Norms are 2-norms per sample.

A measured growth |e_n|/|ε| above bound·(1 + 1e-9) + slack is a violation. ``slack`` allows for what the
computed steps are allowed to deviate from the exact maps, amplified by the bound of the remaining steps:
floating-point rounding, 64·u·bound_n·Σ_{k<n} (|y_k| + |y'_k|) / (bound_k |ε|) with u the unit roundoff
(about 1e-11 in float64 with |ε| ≈ 1e-3 |y|: it cannot hide a real violation), plus, for steps solved to a
tolerance (backward Euler), the a-posteriori defect bound of each solve: Σ_{k<n} (δ_k + δ'_k)·bound_n /
(bound_{k+1} |ε|), where z = y + hf(z) solved with residual r gives |z − z*| ≤ |r| / (1 − hK) =: δ.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor

import stability
from proofs_check.bounds import (
    cumulative_bound,
    exponential_envelope,
    revnet_bound,
    revnet_step_matrix,
    step_factor,
)
from proofs_check.lower_bounds import jacobian_norm, per_sample_norm, per_sample_normalise

StepMap = Callable[[Tensor], Tensor]
VectorField = Callable[[Tensor, Tensor], Tensor]

RELATIVE_TOLERANCE = 1e-9
ROUNDING_SLACK_FACTOR = 64.0
ON_VIOLATION = ("raise", "warn", "ignore")


class BoundViolationError(AssertionError):
    """A measured perturbation growth exceeded its proven bound."""


class BoundViolationWarning(UserWarning):
    """A measured perturbation growth exceeded its bound (issued with ``on_violation="warn"``)."""


@dataclass(frozen=True)
class CertifiedStep:
    """y_{n+1} = apply(y_n): a step from t to t + h whose Lipschitz constant is at most ``factor``.

    ``defect(y, y_next)``, when given, bounds per sample how far the computed ``y_next`` may lie from the
    exact step map's value (an implicit step solved to a tolerance); exact maps leave it None.
    """

    apply: StepMap
    t: float
    h: float
    factor: float
    defect: Callable[[Tensor, Tensor], Tensor] | None = None


@dataclass(frozen=True)
class Verification:
    """Measured |e_n|/|ε| (``growth``, [n+1, B]) against the bound on it (``bound``, [n+1, B]), step by step.

    ``covered`` says whether the bound is a theorem for this comparison: it is False for two independently
    adaptive runs, whose step sequences differ (step selection is not Lipschitz in y0).
    ``envelope`` is e^{K|t_n − t_0|} when K is known; ``envelope_is_bound`` whether every step's factor is
    ≤ e^{|h|K}, so that the envelope is implied by the bound.
    """

    label: str
    times: np.ndarray
    step_sizes: np.ndarray
    growth: np.ndarray
    bound: np.ndarray
    slack: np.ndarray
    epsilon_norms: np.ndarray
    lipschitz: float | None = None
    envelope: np.ndarray | None = None
    envelope_is_bound: bool = False
    covered: bool = True
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.step_sizes)

    @property
    def tightness(self) -> np.ndarray:
        """growth / bound for n = 1..N, shape [N, B]: 1 means the bound is attained."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.growth[1:] / self.bound[1:]

    @property
    def violation_mask(self) -> np.ndarray:
        return self.growth > self.bound * (1 + RELATIVE_TOLERANCE) + self.slack

    @property
    def violated(self) -> bool:
        return bool(self.violation_mask.any())

    def violations(self, limit: int = 10) -> list[dict]:
        """The first ``limit`` violating (step, sample) entries with their growth and bound."""
        steps, samples = np.nonzero(self.violation_mask)
        return [
            {
                "step": int(n),
                "sample": int(b),
                "growth": float(self.growth[n, b]),
                "bound": float(self.bound[n, b]),
            }
            for n, b in list(zip(steps, samples))[:limit]
        ]

    def summary(self) -> dict:
        """Scalar summary: tightness median/max over all steps n ≥ 1 and samples and at the last step, final
        growth, violations."""
        tight = self.tightness[np.isfinite(self.tightness)]
        final_growth = self.growth[-1]
        return {
            "label": self.label,
            "steps": self.n_steps,
            "samples": self.growth.shape[1],
            "lipschitz": self.lipschitz,
            "covered_by_theorem": self.covered,
            "tightness_median": float(np.median(tight)) if tight.size else math.nan,
            "tightness_max": float(tight.max()) if tight.size else math.nan,
            "final_tightness_median": float(np.median(self.tightness[-1])),
            "final_tightness_max": float(np.max(self.tightness[-1])),
            "final_growth_median": float(np.median(final_growth)),
            "final_growth_max": float(final_growth.max()),
            "final_bound_median": float(np.median(self.bound[-1])),
            "final_envelope": float(self.envelope[-1]) if self.envelope is not None else math.nan,
            "envelope_is_bound": self.envelope_is_bound,
            "violations": int(self.violation_mask.sum()),
        }

    def check(self) -> None:
        """Raise ``BoundViolationError`` if a bound covered by the theorem is exceeded."""
        if self.covered and self.violated:
            raise BoundViolationError(_violation_message(self))


# --- building steps ----------------------------------------------------------------------------------------


def _apply_method(func: VectorField, t: float, h: float, method: str, y: Tensor) -> Tensor:
    return stability.step(func, t, y, h, method)


def backward_euler_defect(
    func: VectorField, t: float, h: float, lipschitz: float
) -> Callable[[Tensor, Tensor], Tensor]:
    """(y, z) ↦ |z − y − h f(t + h, z)| / (1 − |h|K) per sample: z* = y + hf(z*) is the fixed point of a
    |h|K-contraction, so |z − z*| ≤ |residual| / (1 − |h|K)."""
    contraction = abs(h) * lipschitz
    if contraction >= 1:
        raise ValueError(f"backward Euler's defect bound needs |h|K < 1, got {contraction:.6g}")

    def defect(y: Tensor, z: Tensor) -> Tensor:
        time = torch.full((), t + h, dtype=z.dtype, device=z.device)
        return _norms(z - y - h * func(time, z)) / (1 - contraction)

    return defect


def solver_steps(
    func: VectorField, method: str, grid: Sequence[float], lipschitz: float
) -> list[CertifiedStep]:
    """The steps of ``method`` (``stability.step``) on ``grid`` for y' = func(t, y) with K = ``lipschitz``."""
    times = [float(t) for t in grid]
    if len(times) < 2:
        raise ValueError("grid needs at least two times")
    steps = []
    for t, t_next in zip(times, times[1:]):
        h = t_next - t
        if not (math.isfinite(h) and h != 0):
            raise ValueError(f"grid must be finite and strictly monotone, got step {h} at t={t}")
        defect = backward_euler_defect(func, t, h, lipschitz) if method == "backward_euler" else None
        apply = partial(_apply_method, func, t, h, method)
        steps.append(CertifiedStep(apply, t, h, step_factor(method, h, lipschitz), defect))
    return steps


def fixed_grid(t0: float, step_size: float, n_steps: int) -> list[float]:
    """t_k = t0 + k h, k = 0..n_steps."""
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if not (math.isfinite(step_size) and step_size != 0):
        raise ValueError(f"step_size must be finite and non-zero, got {step_size}")
    return [t0 + k * step_size for k in range(n_steps + 1)]


def compose(steps: Sequence[CertifiedStep]) -> StepMap:
    """The n-step map y0 ↦ y_n of ``steps``."""

    def run(y: Tensor) -> Tensor:
        for step in steps:
            y = step.apply(y)
        return y

    return run


def perturbation(
    y0: Tensor,
    relative_size: float,
    *,
    direction: str = "random",
    steps: Sequence[CertifiedStep] | None = None,
    iterations: int = 20,
    seed: int = 0,
) -> Tensor:
    """ε with |ε_b| = relative_size·max(1, |y0_b|) per sample, along a seeded Gaussian direction
    (``"random"``) or the top right-singular vector of the Jacobian of the n-step map of ``steps`` at y0
    (``"jacobian"``: the direction a small perturbation grows fastest in, by power iteration on JᵀJ)."""
    if not (math.isfinite(relative_size) and relative_size > 0):
        raise ValueError(f"relative_size must be finite and > 0, got {relative_size}")
    if direction == "random":
        generator = torch.Generator(device=y0.device).manual_seed(seed)
        unit = torch.randn(y0.shape, dtype=y0.dtype, device=y0.device, generator=generator)
    elif direction == "jacobian":
        if not steps:
            raise ValueError("direction='jacobian' needs the steps whose Jacobian to follow")
        _, unit = jacobian_norm(compose(steps), y0, iterations=iterations, seed=seed)
    else:
        raise ValueError(f"direction must be 'random' or 'jacobian', got {direction!r}")
    scale = relative_size * per_sample_norm(y0).clamp_min(1.0)
    return (per_sample_normalise(unit) * scale.view((-1,) + (1,) * (y0.dim() - 1))).detach()


# --- verification ------------------------------------------------------------------------------------------


def verify_steps(
    steps: Sequence[CertifiedStep],
    y0: Tensor,
    epsilon: Tensor,
    *,
    label: str = "",
    lipschitz: float | None = None,
    on_violation: str = "warn",
) -> Verification:
    """Propagate y0 and y0 + ε through ``steps``; the bound after n steps is Π_{i≤n} factor_i."""
    if not steps:
        raise ValueError("no steps to verify")
    y0, epsilon = _check_inputs(y0, epsilon)
    reference, reference_defects = _trajectory(steps, y0)
    perturbed, perturbed_defects = _trajectory(steps, y0 + epsilon)
    factors = [s.factor for s in steps]
    bound = np.repeat(cumulative_bound(factors)[:, None], y0.shape[0], axis=1)
    times = np.array([steps[0].t] + [s.t + s.h for s in steps])
    envelope, envelope_is_bound = None, False
    if lipschitz is not None:
        envelope = exponential_envelope(lipschitz, times)
        envelope_is_bound = all(math.log(s.factor) <= abs(s.h) * lipschitz + 1e-12 for s in steps)
    result = _assemble(
        label,
        times,
        reference,
        perturbed,
        epsilon,
        bound,
        lipschitz,
        envelope,
        envelope_is_bound,
        defects=reference_defects + perturbed_defects,
    )
    _handle(result, on_violation)
    return result


def verify_scheme(
    func: VectorField,
    y0: Tensor,
    epsilon: Tensor,
    *,
    method: str,
    lipschitz: float,
    step_size: float | None = None,
    n_steps: int | None = None,
    grid: Sequence[float] | None = None,
    t0: float = 0.0,
    label: str | None = None,
    on_violation: str = "warn",
) -> Verification:
    """Theorems 3.1/3.2 on y' = func(t, y): ``n_steps`` steps of size ``step_size`` (or an explicit ``grid``).

    The bound is Π_i step_factor(method, h_i, K): (1 + hK)^n for Euler.
    """
    if (grid is None) == (step_size is None):
        raise ValueError("give either step_size (with n_steps) or grid")
    if grid is None:
        if n_steps is None:
            raise ValueError("step_size needs n_steps")
        grid = fixed_grid(t0, step_size, n_steps)
    steps = solver_steps(func, method, grid, lipschitz)
    label = label if label is not None else (f"{method} h={step_size:g}" if step_size is not None else method)
    return verify_steps(steps, y0, epsilon, label=label, lipschitz=lipschitz, on_violation=on_violation)


@dataclass(frozen=True)
class AdaptiveVerification:
    """An adaptive run checked two ways.

    ``shared_grid``: y0 and y0 + ε both take the accepted steps of the unperturbed run, a fixed scheme, so
    Theorem 3.2 applies with the product of step factors over those steps.
    ``independent``: each input adapts its own steps; |e_n| is measured at the unperturbed run's step times
    (the perturbed run reaches them by dense output) against the same product. This is what a network with
    an adaptive ODE block computes, and the theorem does not cover it.
    """

    shared_grid: Verification
    independent: Verification
    unperturbed_steps: int
    perturbed_steps: int


def verify_adaptive(
    func: VectorField,
    y0: Tensor,
    epsilon: Tensor,
    *,
    lipschitz: float,
    t_span: tuple[float, float] = (0.0, 1.0),
    method: str = "dopri5",
    rtol: float = 1e-3,
    atol: float = 1e-6,
    label: str | None = None,
    on_violation: str = "warn",
) -> AdaptiveVerification:
    """Run ``method`` adaptively from y0, then verify on its accepted steps (see ``AdaptiveVerification``).

    The whole batch shares one step sequence (the error norm is taken over the batch, as in torchdiffeq).
    """
    y0, epsilon = _check_inputs(y0, epsilon)
    label = label or f"{method} adaptive rtol={rtol:g}"
    unperturbed = stability.solve(func, y0, list(t_span), method=method, rtol=rtol, atol=atol)
    grid = list(unperturbed.stats.step_times) + [float(t_span[1])]
    shared = verify_scheme(
        func,
        y0,
        epsilon,
        method=method,
        lipschitz=lipschitz,
        grid=grid,
        label=f"{label}, shared grid",
        on_violation=on_violation,
    )
    reference = stability.solve(func, y0, grid, method=method, rtol=rtol, atol=atol)
    perturbed = stability.solve(func, y0 + epsilon, grid, method=method, rtol=rtol, atol=atol)
    independent = _assemble(
        f"{label}, independent steps",
        np.asarray(grid),
        list(reference.ys.unbind(0)),
        list(perturbed.ys.unbind(0)),
        epsilon,
        shared.bound,
        lipschitz,
        shared.envelope,
        shared.envelope_is_bound,
        covered=False,
        note="each input chooses its own steps: step selection is not Lipschitz, the theorem does not apply",
        extra={"perturbed_steps": perturbed.stats.n_accepted},
    )
    _handle(independent, on_violation)
    return AdaptiveVerification(shared, independent, unperturbed.stats.n_accepted, perturbed.stats.n_accepted)


SWITCH_CRITERIA = ("rejections", "steps")


@dataclass(frozen=True)
class StepSwitch:
    """Along y0 + s·d the adaptive solver's ``criterion`` count jumps between s = ``lower`` and ``upper``."""

    criterion: str
    lower: float
    upper: float
    count_lower: int
    count_upper: int


def find_step_switch(
    func: VectorField,
    y0: Tensor,
    direction: Tensor,
    *,
    criterion: str = "rejections",
    t_span: tuple[float, float] = (0.0, 1.0),
    method: str = "dopri5",
    rtol: float = 1e-3,
    atol: float = 1e-6,
    max_scale: float = 1.0,
    scan_points: int = 32,
    tolerance: float = 1e-14,
) -> StepSwitch | None:
    """Where step selection switches along y0 + s·d, s ∈ [0, max_scale], by scan then bisection.

    ``criterion="rejections"``: the number of rejected steps changes — one input accepts a step the other
    rejects, and the two solutions differ by an amount set by the tolerance, not by |ε|, however close the
    inputs are (a jump). ``"steps"``: accepted + rejected changes, which includes the continuous switch where
    the last step stops needing to be clipped to t1 (there the map is continuous but steep).
    Bisects the first scanned interval whose endpoints differ down to ``tolerance``·max(1, s); None if the
    scan sees no change.
    """
    if criterion not in SWITCH_CRITERIA:
        raise ValueError(f"criterion must be one of {SWITCH_CRITERIA}, got {criterion!r}")

    def count(scale: float) -> int:
        stats = stability.solve(
            func, y0 + scale * direction, list(t_span), method=method, rtol=rtol, atol=atol
        ).stats
        return stats.n_rejected if criterion == "rejections" else stats.n_accepted + stats.n_rejected

    grid = np.linspace(0.0, max_scale, scan_points + 1)
    counts = [count(float(x)) for x in grid]
    changes = [i for i in range(scan_points) if counts[i] != counts[i + 1]]
    if not changes:
        return None
    lower, upper = float(grid[changes[0]]), float(grid[changes[0] + 1])
    count_lower, count_upper = counts[changes[0]], counts[changes[0] + 1]
    while upper - lower > tolerance * max(1.0, abs(upper)):
        middle = 0.5 * (lower + upper)
        if middle in (lower, upper):
            break
        count_middle = count(middle)
        if count_middle == count_lower:
            lower = middle
        else:
            upper, count_upper = middle, count_middle
    return StepSwitch(criterion, lower, upper, count_lower, count_upper)


def verify_revnet(
    couplings: Sequence[tuple[StepMap, StepMap, float, float]],
    y0: Tensor,
    epsilon: Tensor,
    *,
    step_size: float,
    split_dim: int = 1,
    label: str | None = None,
    on_violation: str = "warn",
) -> Verification:
    """RevNet as Euler on a coupled system: per coupling (F, G, K_F, K_G), y1 ← y1 + hF(y2); y2 ← y2 + hG(y1).

    y is split in two halves along ``split_dim`` (a dimension of the batch [B, ...]); see ``verify_coupled``.
    """
    h = float(step_size)

    def coupling_step(f: StepMap, g: StepMap, y: Tensor) -> Tensor:
        y1, y2 = y.chunk(2, dim=split_dim)
        y1 = y1 + h * f(y2)
        y2 = y2 + h * g(y1)
        return torch.cat([y1, y2], dim=split_dim)

    maps = [partial(coupling_step, f, g) for f, g, _, _ in couplings]
    matrices = [revnet_step_matrix(h, kf, kg) for _, _, kf, kg in couplings]
    return verify_coupled(
        maps,
        matrices,
        y0,
        epsilon,
        step_sizes=[h] * len(maps),
        split_dim=split_dim,
        label=label or f"revnet h={h:g}",
        on_violation=on_violation,
    )


def verify_coupled(
    maps: Sequence[StepMap],
    matrices: Sequence[np.ndarray],
    y0: Tensor,
    epsilon: Tensor,
    *,
    step_sizes: Sequence[float],
    split_dim: int = 1,
    label: str = "coupled",
    on_violation: str = "warn",
) -> Verification:
    """Steps on a state split in two halves whose errors obey (|e1'|, |e2'|) ≤ M_i (|e1|, |e2|) componentwise.

    The bound is |M_n ⋯ M_1 (|ε1|, |ε2|)| / |ε| per sample (``bounds.revnet_bound``): finer than the product
    of the scalar factors ‖M_i‖₂, since it uses how ε is split between the halves.
    """
    y0, epsilon = _check_inputs(y0, epsilon)
    if not maps or len(maps) != len(matrices) or len(maps) != len(step_sizes):
        raise ValueError("need one matrix and one step size per map, and at least one map")
    if y0.shape[split_dim] % 2:
        raise ValueError(f"dimension {split_dim} of size {y0.shape[split_dim]} cannot be split in halves")
    times = np.concatenate([[0.0], np.cumsum(np.abs(np.asarray(step_sizes, dtype=np.float64)))])
    steps = [CertifiedStep(m, float(t), float(h), math.nan) for m, t, h in zip(maps, times, step_sizes)]
    reference, _ = _trajectory(steps, y0)
    perturbed, _ = _trajectory(steps, y0 + epsilon)
    parts = torch.stack([_norms(part) for part in epsilon.chunk(2, dim=split_dim)], dim=1).numpy()
    bound = revnet_bound(matrices, parts)
    result = _assemble(label, times, reference, perturbed, epsilon, bound, None, None, False)
    _handle(result, on_violation)
    return result


# --- internals -------------------------------------------------------------------------------------------


def _check_inputs(y0: Tensor, epsilon: Tensor) -> tuple[Tensor, Tensor]:
    for name, value in (("y0", y0), ("epsilon", epsilon)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    if y0.dim() < 2 or y0.shape[0] == 0:
        raise ValueError(f"y0 must be a batch [B, ...] with B ≥ 1, got shape {tuple(y0.shape)}")
    if epsilon.shape != y0.shape:
        raise ValueError(f"epsilon has shape {tuple(epsilon.shape)}, y0 has {tuple(y0.shape)}")
    if epsilon.dtype != y0.dtype or epsilon.device != y0.device:
        raise ValueError("epsilon must have the dtype and device of y0")
    y0 = y0.detach()
    # The perturbation actually applied is fl(y0 + ε) − y0 (exact by Sterbenz where |ε_i| ≤ |y0_i|): measure
    # growth relative to it, so rounding of the sum cannot pose as amplification.
    epsilon = (y0 + epsilon.detach()) - y0
    if bool((_norms(epsilon) == 0).any()):
        raise ValueError("every sample needs a non-zero perturbation |ε| > 0 (after rounding y0 + ε)")
    return y0, epsilon


def _norms(x: Tensor) -> Tensor:
    """Per-sample 2-norms as float64 on the CPU."""
    return per_sample_norm(x.detach().to(torch.float64)).cpu()


@torch.no_grad()
def _trajectory(steps: Sequence[CertifiedStep], y: Tensor) -> tuple[list[Tensor], np.ndarray]:
    """(states y_0..y_n, defects [n, B]) of ``steps`` from ``y``."""
    states, defects = [y], np.zeros((len(steps), y.shape[0]))
    for n, step in enumerate(steps):
        y_next = step.apply(y)
        if not bool(torch.isfinite(y_next).all()):
            raise stability.NonFiniteValueError(
                f"the scheme produced non-finite values at step {n + 1} (t={step.t + step.h:.6g})",
                t=step.t + step.h,
                h=step.h,
            )
        if step.defect is not None:
            defects[n] = step.defect(y, y_next).numpy()
        states.append(y_next)
        y = y_next
    return states, defects


def _assemble(
    label: str,
    times: np.ndarray,
    reference: Sequence[Tensor],
    perturbed: Sequence[Tensor],
    epsilon: Tensor,
    bound: np.ndarray,
    lipschitz: float | None,
    envelope: np.ndarray | None,
    envelope_is_bound: bool,
    *,
    defects: np.ndarray | None = None,
    covered: bool = True,
    note: str = "",
    extra: dict | None = None,
) -> Verification:
    """Growth, slack (module docstring) and the result; ``defects`` [n, B] sums both trajectories'."""
    epsilon_norms = _norms(epsilon).numpy()
    growth = np.stack([_norms(b - a).numpy() for a, b in zip(reference, perturbed)]) / epsilon_norms
    sizes = np.stack([(_norms(a) + _norms(b)).numpy() for a, b in zip(reference, perturbed)])
    unit_roundoff = torch.finfo(epsilon.dtype).eps / 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        accumulated = np.cumsum(np.nan_to_num(sizes[:-1] / bound[:-1]), axis=0)
        slack = np.zeros_like(growth)
        slack[1:] = ROUNDING_SLACK_FACTOR * unit_roundoff * bound[1:] * accumulated / epsilon_norms
        if defects is not None:
            slack[1:] += bound[1:] * np.cumsum(np.nan_to_num(defects / bound[1:]), axis=0) / epsilon_norms
    return Verification(
        label=label,
        times=np.asarray(times, dtype=np.float64),
        step_sizes=np.diff(np.asarray(times, dtype=np.float64)),
        growth=growth,
        bound=bound,
        slack=np.nan_to_num(slack, nan=0.0),
        epsilon_norms=epsilon_norms,
        lipschitz=lipschitz,
        envelope=envelope,
        envelope_is_bound=envelope_is_bound,
        covered=covered,
        note=note,
        extra=extra or {},
    )


def _violation_message(result: Verification) -> str:
    worst = result.violations(limit=3)
    details = "; ".join(
        f"step {v['step']} sample {v['sample']}: {v['growth']:.6g} > {v['bound']:.6g}" for v in worst
    )
    return (
        f"BOUND VIOLATED for {result.label!r} (K={result.lipschitz}): {int(result.violation_mask.sum())} "
        f"(step, sample) entries exceed the bound; {details}"
    )


def _handle(result: Verification, on_violation: str) -> None:
    if on_violation not in ON_VIOLATION:
        raise ValueError(f"on_violation must be one of {ON_VIOLATION}, got {on_violation!r}")
    if not result.violated or on_violation == "ignore":
        return
    if result.covered and on_violation == "raise":
        raise BoundViolationError(_violation_message(result))
    prefix = "" if result.covered else "(not covered by the theorem) "
    warnings.warn(prefix + _violation_message(result), BoundViolationWarning, stacklevel=3)


__all__ = [
    "AdaptiveVerification",
    "BoundViolationError",
    "BoundViolationWarning",
    "SWITCH_CRITERIA",
    "backward_euler_defect",
    "StepSwitch",
    "compose",
    "find_step_switch",
    "perturbation",
    "CertifiedStep",
    "Verification",
    "fixed_grid",
    "solver_steps",
    "verify_adaptive",
    "verify_coupled",
    "verify_revnet",
    "verify_scheme",
    "verify_steps",
]
