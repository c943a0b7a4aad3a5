"""FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
attack"): the targeted fast adaptive boundary attack, L-inf and L2, as in AutoAttack "standard".

Per sample and target class ``t`` (the ``target_classes`` highest-scoring other classes of the clean point,
in turn), with ``x_0`` the clean point and ``g(z) = f_t(z) - f_y(z)`` (positive iff ``t`` beats ``y``):

* linearize at the iterate ``x_k``: the hyperplane ``H = {z : g(x_k) + grad g(x_k) . (z - x_k) = 0}``;
* project ``x_k`` and ``x_0`` onto ``H cap [0, 1]^d`` in the attack's norm (minimal ``||d||``), giving
  ``d_k`` and ``d_0`` (:func:`project_onto_hyperplane_in_box`);
* step with overshoot ``eta``, biased towards the clean point:
  ``x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x_0 + eta d_0))``, ``a = min(||d_k|| / (||d_k|| + ||d_0||),
  alpha_max)``;
* when ``x_{k+1}`` is misclassified, keep it if it is the closest adversarial so far and step back towards
  the clean point, ``x_{k+1} <- x_0 + beta (x_{k+1} - x_0)``.

FAB minimizes the distance; as in AutoAttack, a sample counts as fooled at ``eps`` iff its closest
adversarial lies within ``eps``, and the next target (or restart) runs on the samples not yet fooled at
``eps``. The first run starts at ``x_0``; restarts start at ``x_0 + eps/2 * u / ||u||`` (``u`` uniform in
[-1, 1]^d for L-inf, Gaussian for L2). Defaults are AutoAttack "standard": 100 iterations, one restart,
nine targets, ``alpha_max = 0.1``, ``eta = 1.05``, ``beta = 0.9``.

Cost per iteration: one forward and one backward pass, plus one more for the samples that stepped back
(the reference implementation spends an extra forward pass per iteration on the success test; here the
next linearization's forward pass does it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import (
    Attack,
    AttackResult,
    check_finite_logits,
    check_labels_in_range,
    perturbation_size,
    require_count,
    require_nonnegative,
    require_norm,
)
from .gradients import GradientMonitor

__all__ = ["FABT", "project_onto_hyperplane_in_box"]

_TINY = 1e-12


def project_onto_hyperplane_in_box(point: Tensor, w: Tensor, b: Tensor, norm: str) -> Tensor:
    """Per row, the smallest step ``d`` (in ``norm``) with ``w . (p + d) = b`` and ``p + d`` in [0, 1]^d.

    With ``c = b - w . p`` made non-negative by flipping the signs of ``w`` and ``c``, and
    ``room_i = 1 - p_i`` (``w_i > 0``) or ``p_i`` (``w_i < 0``), the optimum moves each coordinate along
    ``sign(w_i)`` by ``min(r, room_i)`` (L-inf, radius ``r``) or ``min(lam |w_i|, room_i)`` (L2, KKT
    multiplier ``lam``). Both reach ``w . d = c`` on a piecewise-linear increasing curve
    ``sum_i min(theta s_i, v_i)`` with ``v_i = |w_i| room_i`` and ``s_i = |w_i|`` (L-inf) or ``w_i^2`` (L2),
    solved exactly by sorting the breakpoints ``v_i / s_i``. When the box cannot reach the hyperplane, the
    box corner closest to it (every coordinate at its room) is returned. ``point``, ``w``: ``(N, D)``;
    ``b``: ``(N,)``.
    """
    require_norm(norm)
    c = b - (w * point).sum(dim=1)
    sign = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w, c = w * sign[:, None], c * sign
    magnitude = w.abs()
    room = torch.where(w > 0, 1.0 - point, point).clamp_min(0.0)
    slope = magnitude if norm == "linf" else magnitude.square()
    cap = magnitude * room
    active = slope > 0
    breakpoint = torch.where(active, cap / slope.clamp_min(_TINY), torch.inf)
    order = breakpoint.argsort(dim=1)
    theta_sorted = breakpoint.gather(1, order)
    cap_sorted, slope_sorted = cap.gather(1, order), slope.gather(1, order)
    # at the k-th breakpoint the first k coordinates are saturated and the rest still grow with slope
    saturated = cap_sorted.cumsum(dim=1) - cap_sorted
    growing = slope_sorted.flip(1).cumsum(dim=1).flip(1)
    reached = saturated + torch.where(torch.isfinite(theta_sorted), theta_sorted, 0.0) * growing
    reached = torch.where(torch.isfinite(theta_sorted), reached, torch.inf)
    k = torch.searchsorted(reached, c[:, None].contiguous(), right=False).clamp_max(w.shape[1] - 1)
    # theta between breakpoints k-1 and k solves saturated_k + theta growing_k = c
    theta = (c[:, None] - saturated.gather(1, k)) / growing.gather(1, k).clamp_min(_TINY)
    feasible = c <= cap.sum(dim=1)
    theta = torch.where(feasible[:, None], theta.clamp_min(0.0), torch.inf)
    step = torch.minimum(theta if norm == "linf" else theta * magnitude, room)
    return torch.where(active, step * torch.sign(w), 0.0)


def _norm_column(v: Tensor, norm: str) -> Tensor:
    return perturbation_size(v, norm).clamp_min(1e-8).view(-1, *([1] * (v.dim() - 1)))


def fab_run(
    linearize: Callable[..., tuple[Tensor, Tensor, Tensor]],
    x0: Tensor,
    y: Tensor,
    start: Tensor,
    norm: str,
    steps: int,
    alpha_max: float,
    eta: float,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One FAB run from ``start``. ``linearize(z) -> (logits, g, grad g)`` at ``z``. Returns
    ``(closest adversarial, its distance (inf where none), passes per sample)``; ``linearize(z, rows)``
    linearizes the samples ``rows`` only (after a step back)."""
    n = x0.shape[0]
    flat0 = x0.flatten(1)
    best = x0.clone()
    best_distance = torch.full((n,), torch.inf, device=x0.device, dtype=x0.dtype)
    x1 = start.clone()
    _, g, grad = linearize(x1)
    spent = torch.ones(n, dtype=torch.long, device=x0.device)
    for k in range(steps):
        w = grad.flatten(1)
        b = (w * x1.flatten(1)).sum(dim=1) - g
        both = project_onto_hyperplane_in_box(torch.cat([x1.flatten(1), flat0]), torch.cat([w, w]),
                                              torch.cat([b, b]), norm)
        d1, d0 = both[:n].view_as(x1), both[n:].view_as(x1)
        a1, a0 = _norm_column(d1, norm), _norm_column(d0, norm)
        alpha = (a1 / (a1 + a0)).clamp(0.0, alpha_max)
        x1 = ((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d0) * alpha).clamp(0.0, 1.0)
        logits, g, grad = linearize(x1)
        spent += 1
        fooled = logits.argmax(dim=1) != y
        if bool(fooled.any()):
            distance = perturbation_size(x1 - x0, norm)
            closer = fooled & (distance < best_distance)
            best[closer] = x1[closer]
            best_distance = torch.where(closer, distance, best_distance)
            if k + 1 < steps:
                x1[fooled] = x0[fooled] + beta * (x1[fooled] - x0[fooled])
                index = fooled.nonzero().squeeze(1)
                _, g_back, grad_back = linearize(x1[index], index)
                g, grad = g.clone(), grad.clone()
                g[index], grad[index] = g_back, grad_back
                spent[index] += 1
    return best, best_distance, spent


class FABT(Attack):
    """FAB-T: targeted FAB against each of the ``target_classes`` highest-scoring other classes in turn (one
    run per target and restart, on the samples not yet fooled within ``eps``). Untargeted in effect: ``y``
    holds the true labels and success means misclassification within ``eps``.

    Result ``stats``: ``fooled`` per sample, ``min_distance`` (closest adversarial found, inf where none),
    zero / non-finite gradient fractions, the mean of ``f_t - f_y`` per iteration of the first run
    (``objective_curve``) and ``queries`` (forward+backward passes per sample).
    """

    def __init__(
        self,
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        target_classes: int = 9,
        norm: str = "linf",
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        *,
        seed: int | None = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.eps = require_nonnegative("eps", eps)
        self.steps = require_count("steps", steps)
        self.restarts = require_count("restarts", restarts)
        self.target_classes = require_count("target_classes", target_classes)
        require_norm(norm)
        self.norm = norm
        self.alpha_max = require_nonnegative("alpha_max", alpha_max)
        if self.alpha_max > 1:
            raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
        self.eta = require_nonnegative("eta", eta)
        self.beta = require_nonnegative("beta", beta)
        if not 0 < self.beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta}")

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        with torch.no_grad():
            logits = model(x)
        check_labels_in_range(logits, y)
        check_finite_logits(logits)
        monitor = GradientMonitor()
        x_adv = x.clone()
        fooled = logits.argmax(1) != y
        min_distance = torch.where(fooled, 0.0, torch.inf).to(x.dtype)
        queries = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        ranked = logits.argsort(dim=1, descending=True)
        count = min(self.target_classes, logits.shape[1] - 1)
        curve: list[Tensor] = []
        if self.eps > 0:
            generator = self.generator(x.device)
            for target_rank in range(1, count + 1):
                for restart in range(self.restarts):
                    todo = (~fooled).nonzero().squeeze(1)
                    if todo.numel() == 0:
                        break
                    x0, y0, t0 = x[todo], y[todo], ranked[todo, target_rank]
                    start = x0 if restart == 0 else self._random_start(x0, generator)
                    linearize = _Linearization(model, y0, t0, monitor)
                    best, distance, spent = fab_run(linearize, x0, y0, start, self.norm, self.steps,
                                                    self.alpha_max, self.eta, self.beta)
                    queries[todo] += spent
                    curve = curve or linearize.curve
                    min_distance[todo] = torch.minimum(min_distance[todo], distance)
                    success = distance <= self.eps
                    x_adv[todo[success]] = best[success]
                    fooled[todo[success]] = True
        return AttackResult(x_adv, {**monitor.summary(), "objective_curve": [float(v) for v in curve],
                                    "fooled": fooled.cpu(), "queries": queries.cpu(),
                                    "min_distance": min_distance.cpu()})

    def _random_start(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        if self.norm == "linf":
            u = 2.0 * torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) - 1.0
        else:
            u = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return (x0 + 0.5 * self.eps * u / (_norm_column(u, self.norm) + _TINY)).clamp(0.0, 1.0)

    def _config(self) -> dict[str, object]:
        return {
            "eps": self.eps,
            "steps": self.steps,
            "restarts": self.restarts,
            "target_classes": self.target_classes,
            "norm": self.norm,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
            "seed": self.seed,
        }


class _Linearization:
    """``(z, rows) -> (logits, g, grad g)`` with ``g = f_t - f_y`` for the samples ``rows`` (all when
    ``None``): one forward and one backward pass. Gradients go through the monitor; the mean ``g`` of each
    full-batch call is kept in ``curve``."""

    def __init__(self, model: nn.Module, y: Tensor, target: Tensor, monitor: GradientMonitor) -> None:
        self.model, self.y, self.target, self.monitor = model, y, target, monitor
        self.curve: list[Tensor] = []

    def __call__(self, z: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        y, target = (self.y, self.target) if rows is None else (self.y[rows], self.target[rows])
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(z)
            check_finite_logits(logits)
            index = torch.arange(z.shape[0], device=z.device)
            g = logits[index, target] - logits[index, y]
            (gradient,) = torch.autograd.grad(g.sum(), z)
        g = g.detach()
        gradient = self.monitor.record(g, gradient)
        if rows is None:
            self.curve.append(g.mean())
        return logits.detach(), g, gradient
