"""Counting the cost of an evaluation: per-sample forward and backward passes through the models attacked.

A forward pass of a batch of ``b`` samples counts ``b``; a backward pass through that output counts ``b``
again (whatever the loss, one vector-Jacobian product per sample). So an APGD step on one sample costs one
forward and one backward pass and a Square query one forward pass: the units of AutoAttack's budgets.

    with PassCounter(model, source_model) as counter:
        ...
    counter.forward, counter.backward

Hooks sit on the top-level modules only, so a model's own submodules never count twice; a surrogate-solver
attack, which calls the same module under another solver, counts in the same units.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["PassCounter"]


class PassCounter:
    """Per-sample forward and backward passes through ``models`` while the context is open."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = list(dict.fromkeys(models))  # a model given twice is hooked once
        self.forward = 0
        self.backward = 0
        self._handles: list[Any] = []

    def __enter__(self) -> PassCounter:
        for model in self.models:
            self._handles.append(model.register_forward_hook(self._on_forward))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def snapshot(self) -> tuple[int, int]:
        """``(forward, backward)`` so far."""
        return self.forward, self.backward

    def _on_forward(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            return
        samples = int(output.shape[0]) if output.dim() else 1
        self.forward += samples
        if output.requires_grad:
            output.register_hook(lambda grad, samples=samples: self._on_backward(samples))

    def _on_backward(self, samples: int) -> None:
        self.backward += samples
