"""Solver statistics: the ``pop_solver_stats()`` protocol (see :mod:`nets.training`) and summing the counters
of all processes."""

from __future__ import annotations

import torch
import torch.nn as nn

from nets.training.distributed import unwrap_model


def pop_solver_stats(model: nn.Module) -> dict[str, float]:
    """Key-wise sum of ``pop_solver_stats()`` over the outermost submodules implementing it (module doc)."""
    totals: dict[str, float] = {}
    stack = [unwrap_model(model)]
    while stack:
        module = stack.pop()
        pop = getattr(module, "pop_solver_stats", None)
        if callable(pop):
            for key, value in dict(pop()).items():
                totals[key] = totals.get(key, 0) + (
                    value.item() if isinstance(value, torch.Tensor) else value
                )
        else:
            stack.extend(module.children())
    return totals


def _sum_stats(per_rank: list[dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for stats in per_rank:
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
    return totals
