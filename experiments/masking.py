"""Gradient-masking diagnostics for networks with ODE blocks.

Later work showed that much of the apparent robustness of ODE-Nets is gradient masking by the adaptive
solver. Two tests tell: (1) do input gradients through the deployed solver agree with those of a much more
accurate solve of the same network? (2) do adversarials crafted through an accurate or fixed-step surrogate
solver transfer to the deployed model better than the model's own white-box attack? If either holds, the
white-box number overstates robustness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks import Attack
from attacks.base import WrappedAttack
from nets.odenet import ODEBlock

SOLVER_FIELDS = ("method", "rtol", "atol", "step_size", "per_sample", "gradient", "solver_options")


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


@contextlib.contextmanager
def solver_override(model: nn.Module, **options: Any) -> Iterator[nn.Module]:
    """Temporarily solve every ODE block of ``model`` with other settings.

    Keys: ``method``, ``rtol``, ``atol``, ``step_size``, ``per_sample``, ``gradient``, and ``solver_options``
    (other ``stability.SolverOptions`` fields, e.g. ``{"max_steps": 10_000}``), applied with
    ``ODEBlock.solver_override``.
    """
    unknown = set(options) - set(SOLVER_FIELDS)
    if unknown:
        raise ValueError(f"unknown solver options {sorted(unknown)}; allowed: {SOLVER_FIELDS}")
    changes = {name: value for name, value in options.items() if name != "solver_options"}
    changes.update(options.get("solver_options") or {})
    with contextlib.ExitStack() as stack:
        for block in ode_blocks(model):  # validated SolverOptions.replace, restored on exit
            stack.enter_context(block.solver_override(**changes))
        yield model


class SurrogateSolverAttack(WrappedAttack):
    """Craft with ``inner`` while the model's ODE blocks use the surrogate solver; evaluate as deployed.

    A transfer attack from the same weights: if it beats the direct white-box attack, the deployed solver's
    gradients are masking.
    """

    def __init__(self, inner: Attack, **solver_options: Any) -> None:
        super().__init__(inner)
        self.solver_options = solver_options

    def _around(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return solver_override(model, **self.solver_options)

    def _config(self) -> dict[str, Any]:
        return {"inner": repr(self.inner), **self.solver_options}


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """∇_x of the summed cross-entropy, model in eval mode."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, x)
    return gradient


def gradient_agreement(model: nn.Module, x: Tensor, y: Tensor, reference_options: dict[str, Any],
                       other_options: dict[str, dict[str, Any]], *,
                       on_progress: Callable[[int], object] | None = None) -> dict[str, dict[str, float]]:
    """Per-sample cosine similarity and relative error of input gradients against a reference solve.

    Returns, for the deployed solver and each entry of ``other_options``, the median and minimum cosine
    similarity and the median relative L2 error to the gradient under ``reference_options``.
    ``on_progress(len(x))`` is called after each of the ``2 + len(other_options)`` gradient passes.
    """
    def done() -> None:
        if on_progress is not None:
            on_progress(x.shape[0])

    was_training = model.training
    model.eval()
    try:
        with solver_override(model, **reference_options):
            reference = input_gradient(model, x, y).flatten(1)
        done()
        candidates = {"deployed": input_gradient(model, x, y)}
        done()
        for name, options in other_options.items():
            with solver_override(model, **options):
                candidates[name] = input_gradient(model, x, y)
            done()
    finally:
        model.train(was_training)
    report = {}
    for name, gradient in candidates.items():
        gradient = gradient.flatten(1)
        cosine = F.cosine_similarity(gradient, reference, dim=1)
        relative = (gradient - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-30)
        report[name] = {"median_cosine": float(cosine.median()), "min_cosine": float(cosine.min()),
                        "median_relative_error": float(relative.median())}
    return report
