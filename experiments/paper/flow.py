"""What the ODE block does to a trained model, measured on the deployed model (per-sample step control):

* :func:`gradient_norms` — the distribution of ‖∇ₓ CE(f(x), y)‖₁ over images (the dual norm of L∞: ε‖∇ₓ‖₁
  is the first-order loss gain of an L∞ step of size ε); a vanishing gradient is masking, not robustness;
* :func:`step_counts` — accepted steps and forward NFE per image under per-sample step control;
* :func:`backward_nfe` — evaluations of f per image in one input-gradient pass: backprop differentiates each
  recorded evaluation once (as many vector-Jacobian products as forward evaluations); the adjoint solves its
  own augmented system backwards, counted by ``stability``;
* :func:`field_gain` — the learned scale γ of f's closing GroupNorm (|f| ≈ γ, so t1 · γ is the size of the
  flow's displacement).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import stability
from experiments.masking import ode_blocks, solver_override

#: a gradient norm below this is counted as vanished (float32 rounding of a non-zero gradient is far above)
VANISHED = 1e-8


def _batches(x: Tensor, y: Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def _deployed(model: nn.Module):
    """Per-sample step control for ODE models (a no-op context otherwise)."""
    return solver_override(model, per_sample=True)


def gradient_norms(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 250) -> dict[str, Any]:
    """‖∇ₓ CE‖₁ per image on the deployed model: median, 10th / 90th percentile, the fraction below
    ``VANISHED`` and the fraction that is not finite."""
    model.eval()
    norms = []
    with _deployed(model), torch.enable_grad():
        for xb, yb in _batches(x, y, batch_size):
            xb = xb.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(xb), yb, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, xb)
            norms.append(gradient.flatten(1).abs().sum(dim=1).detach().double().cpu())
    values = torch.cat(norms)
    finite = values[torch.isfinite(values)]
    quantile = (lambda q: float(torch.quantile(finite, q))) if finite.numel() else (lambda q: float("nan"))
    return {
        "norm": "l1",
        "samples": int(values.numel()),
        "median": quantile(0.5),
        "p10": quantile(0.1),
        "p90": quantile(0.9),
        "fraction_below": float((values < VANISHED).double().mean()),
        "threshold": VANISHED,
        "fraction_nonfinite": float((~torch.isfinite(values)).double().mean()),
    }


def step_counts(model: nn.Module, x: Tensor, batch_size: int = 250) -> dict[str, Any] | None:
    """Per-image accepted steps and forward NFE of the (first) ODE block under per-sample step control:
    median, 10th / 90th percentile and mean. None for a model without an ODE block."""
    blocks = ode_blocks(model)
    if not blocks:
        return None
    block = blocks[0]
    model.eval()
    steps: list[int] = []
    nfe: list[int] = []
    rejected: list[int] = []
    with _deployed(model), torch.no_grad():
        block.pop_solver_stats()
        for start in range(0, x.shape[0], batch_size):
            inputs: list[Tensor] = []
            handle = block.register_forward_pre_hook(lambda _, args, store=inputs: store.append(args[0]))
            try:
                model(x[start : start + batch_size])
            finally:
                handle.remove()
            solution = stability.solve(block.func, inputs[0], [0.0, block.t1], block.options)
            runs = solution.stats
            if not isinstance(runs, list):
                runs = [runs] * inputs[0].shape[0]
            steps += [run.n_accepted for run in runs]
            rejected += [run.n_rejected for run in runs]
            nfe += [run.nfe for run in runs]
        block.pop_solver_stats()
    return {
        "method": block.method,
        "step_size": block.step_size,
        "rtol": block.rtol,
        "atol": block.atol,
        "samples": len(steps),
        "steps_median": statistics.median(steps),
        "steps_p10": _percentile(steps, 0.1),
        "steps_p90": _percentile(steps, 0.9),
        "rejected_mean": statistics.fmean(rejected),
        "nfe_median": statistics.median(nfe),
        "nfe_mean": statistics.fmean(nfe),
    }


def _percentile(values: list[int], q: float) -> float:
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))


def backward_nfe(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 250) -> dict[str, Any] | None:
    """Evaluations of f per image in one input-gradient pass: ``backprop`` (as deployed, per-sample control:
    one vector-Jacobian product per recorded forward evaluation, so equal to the forward NFE) and
    ``adjoint`` (shared step control, as the suite's adjoint attack: the backward solve's NFE, which every
    image of the batch goes through). None for a model without an ODE block."""
    blocks = ode_blocks(model)
    if not blocks:
        return None
    block = blocks[0]
    model.eval()
    adjoint_nfe, solves = 0, 0
    with solver_override(model, per_sample=False, gradient="adjoint"), torch.enable_grad():
        block.pop_solver_stats()
        for xb, yb in _batches(x, y, batch_size):
            xb = xb.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(xb), yb, reduction="sum")
            torch.autograd.grad(loss, xb)
            stats = block.pop_solver_stats()
            adjoint_nfe += stats.get("backward_nfe", 0)
            solves += stats["solves"]
    counts = step_counts(model, x, batch_size)
    return {
        "backprop_per_sample": counts["nfe_mean"] if counts else None,
        "adjoint_per_sample": adjoint_nfe / max(solves, 1),
    }


def field_gain(model: nn.Module) -> float | None:
    """Mean |γ| of the closing GroupNorm of the (first) ODE block's f (None without an ODE block or without
    such a norm)."""
    blocks = ode_blocks(model)
    norms = getattr(blocks[0].func, "norms", None) if blocks else None
    if not norms:
        return None
    return float(norms[-1].weight.detach().abs().mean())
