"""Budgeted mode for CPUs: take the easily broken points out early, spend the targeted attack's iterations on
the targets a linear model says are nearest, and give the black-box check a tenth of its queries.

Early discarding of the points a cheap attack already breaks: APGD runs every sample of its batch for all its
iterations, even the ones fooled at the first step, so on a model that most points fall for, the full APGD-CE
pass is most of AutoAttack's cost. The budgeted cascade first runs APGD-CE for :data:`PROBE_STEPS` steps; only
the survivors go on to the full-length APGD-CE and the later attacks (the cascade's per-sample bookkeeping
makes this exact: a point counts as robust only if it survives every stage). This is the budget-allocation
idea of A3 (Liu et al., "Practical Evaluation of Adversarial Robustness via Adaptive Auto Attack", CVPR 2022)
with the discarding criterion reversed: A3 stops spending on points its online statistics call hopeless; we
stop spending on points already broken, which never lowers the attack's strength on the others.

MALT target ordering (Melamed, Yehudai & Shamir, "MALT Powers Up Adversarial Attacks", NeurIPS 2023): for a
sample of class ``y`` with logits ``z``, rank the other classes ``t`` by the distance a linearization of the
margin puts the decision boundary at,

    d_t = (z_y - z_t) / ||∇ₓ z_y - ∇ₓ z_t||_*      (||·||_* the dual norm: L1 for L-inf, L2 for L2),

and run targeted APGD only against the ``k`` smallest. AutoAttack ranks targets by ``z_t`` alone and runs
nine of them; MALT's ranking costs one backward pass per class.

:func:`budget_preset` is the ``standard``/``quick`` preset with an APGD-CE probe of :data:`PROBE_STEPS` steps
in front, APGD-T replaced by MALT-ordered APGD-T over :data:`BUDGET_TARGETS` targets and Square's queries
divided by :data:`QUERY_DIVISOR`; the full-length APGD-CE is unchanged.
How close it comes to the full preset is measured, not assumed (docs/evaluation.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .apgd import APGD, APGDT
from .base import AttackResult, check_finite_logits, check_labels_in_range
from .square import Square
from .suite import PRESETS, SuiteAttack

__all__ = ["BUDGET_TARGETS", "PROBE_STEPS", "QUERY_DIVISOR", "MALTAPGDT", "budget_preset", "malt_targets"]

BUDGET_TARGETS = 2
PROBE_STEPS = 10
QUERY_DIVISOR = 10


def malt_targets(model: nn.Module, x: Tensor, y: Tensor, count: int, norm: str = "linf") -> Tensor:
    """``(N, k)`` classes other than ``y``, nearest first by the MALT distance ``d_t`` (module docstring),
    ``k = min(count, classes - 1)``.

    One forward pass and one backward pass per class. A class whose gradient gap is zero gets distance +inf
    (the linearization never reaches it), so it comes last.
    """
    dual = {"linf": 1, "l2": 2}[norm]
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        check_labels_in_range(logits, y)
        check_finite_logits(logits)
        classes = logits.shape[1]
        if count < 1 or classes < 2:
            raise ValueError(f"need count >= 1 and >= 2 classes, got count {count}, {classes} classes")
        gradients = []
        for c in range(classes):
            (gradient,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < classes - 1)
            gradients.append(gradient.flatten(1))
    jacobian = torch.stack(gradients, dim=1)  # (N, classes, inputs)
    logits = logits.detach()
    rows = torch.arange(x.shape[0], device=x.device)
    gap = logits[rows, y].unsqueeze(1) - logits  # z_y - z_t
    gradient_gap = (jacobian[rows, y].unsqueeze(1) - jacobian).norm(p=dual, dim=2)
    distance = torch.where(gradient_gap > 0, gap / gradient_gap.clamp_min(1e-30), torch.inf)
    distance[rows, y] = torch.nan  # the label itself: never a target
    order = distance.nan_to_num(nan=torch.inf).argsort(dim=1, stable=True)
    order = order[order != y.unsqueeze(1)].view(x.shape[0], classes - 1)
    return order[:, : min(count, classes - 1)]


class MALTAPGDT(APGDT):
    """Targeted APGD (targeted DLR loss) against the ``target_classes`` MALT-nearest classes of each sample
    (:func:`malt_targets`) instead of the highest-scoring ones."""

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        self._ranked = malt_targets(model, x, y, self.target_classes, self.norm)
        try:
            return super()._attack(model, x, y)
        finally:
            del self._ranked

    def _targets(self, logits: Tensor, y: Tensor) -> list[Tensor | None]:
        super()._targets(logits, y)  # the same refusal below 4 classes
        ranked = self._ranked
        return [ranked[:, k] for k in range(ranked.shape[1]) for _ in range(self.restarts)]


def budget_preset(name: str, norm: str = "linf", seed: int = 0, *, steps: int | None = None,
                  targets: int | None = None, queries: int | None = None) -> list[SuiteAttack]:
    """The budgeted version of preset ``name``: an APGD-CE probe of :data:`PROBE_STEPS` steps, APGD-CE as in
    the preset on its survivors, MALT-ordered APGD-T over ``targets`` (default :data:`BUDGET_TARGETS`)
    classes, Square with the preset's queries divided by :data:`QUERY_DIVISOR` (``queries`` overrides the
    result)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    steps = steps if steps is not None else PRESETS[name]["steps"]
    targets = targets if targets is not None else BUDGET_TARGETS
    queries = queries if queries is not None else max(1, PRESETS[name]["queries"] // QUERY_DIVISOR)
    probe = min(PROBE_STEPS, steps)
    return [
        SuiteAttack(f"APGD-CE-{probe} probe", lambda e: APGD(e, steps=probe, norm=norm, seed=seed)),
        SuiteAttack(f"APGD-CE-{steps}", lambda e: APGD(e, steps=steps, norm=norm, seed=seed)),
        SuiteAttack(
            f"APGD-T-MALT-{steps}x{targets}",
            lambda e: MALTAPGDT(e, steps=steps, target_classes=targets, norm=norm, seed=seed),
        ),
        SuiteAttack(
            f"Square-{queries}",
            lambda e: Square(e, max_queries=queries, norm=norm, seed=seed),
            kind="score-based",
        ),
    ]
