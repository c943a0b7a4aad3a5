"""Lipschitz rules for pooling layers (per-sample 2-norm), registered with ``proofs_check.lipschitz``.

* Average pooling (``AvgPool1d/2d/3d``, ``AdaptiveAvgPool1d/2d/3d``) is a linear map A with entries ≥ 0, so
  the Schur test bounds its norm: ‖A‖₂ ≤ √(‖A‖₁‖A‖∞) = √(max column sum · max row sum). The row sums are
  A·1 — the layer applied to ones — and the column sums Aᵀ·1 — the gradient of the sum of its outputs — so
  both come from the layer itself on the actual input shape, whatever its kernel, stride, padding,
  ``ceil_mode``, ``count_include_pad`` or divisor. The bound is exact for windows that do not overlap
  (1/√(window size); global average pooling on H×W: 1/√(HW)); a power iteration on AᵀA gives the lower value.
* Max pooling (``MaxPool1d/2d``): |max_w x − max_w z| ≤ max_{i∈w} |x_i − z_i| ≤ ‖(x − z)_w‖, so
  ‖P(x) − P(z)‖² ≤ Σ_i m_i (x_i − z_i)² ≤ max_i m_i · ‖x − z‖², with m_i the number of windows that contain
  input i (counted by ``fold(unfold(ones))`` with the layer's kernel, stride, padding and dilation; with
  ``ceil_mode`` the extra windows at the end are counted too). K ≤ √(max m); K ≥ 1 (move one window's
  maximum), so K = 1 for windows that do not overlap.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from proofs_check.lipschitz import LayerBound, register_lipschitz_rule
from proofs_check.operator_norms import ROUNDING_MARGIN, NotCertifiableError

_AVERAGE = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d)


def _average(module: nn.Module, shape, name, options) -> list[LayerBound]:
    divisor = getattr(module, "divisor_override", None)
    if divisor is not None and divisor <= 0:  # the Schur test needs A >= 0 entrywise
        raise NotCertifiableError(f"{name}: divisor_override={divisor} makes the pooling weights negative")
    ones = torch.ones(1, *shape, dtype=torch.float64, requires_grad=True)
    out = module(ones)
    max_row_sum = float(out.detach().max())
    (column_sums,) = torch.autograd.grad(out.sum(), ones)
    upper = math.sqrt(float(column_sums.max()) * max_row_sum)
    return [LayerBound(name, type(module).__name__, upper * (1 + ROUNDING_MARGIN),
                       _power_iteration(module, shape, options.iterations, options.seed))]


def _power_iteration(module: nn.Module, shape, iterations: int, seed: int) -> float:
    """‖A v‖ for the unit v after ``iterations`` steps of v ← AᵀA v: a lower value of ‖A‖₂."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(1, *shape, dtype=torch.float64, generator=generator)
    estimate = 0.0
    for _ in range(max(iterations, 1)):
        v = v / v.norm()
        v.requires_grad_(True)
        out = module(v)
        estimate = float(out.detach().norm())
        (v,) = torch.autograd.grad(out, v, out)  # Aᵀ(A v)
        v = v.detach()
        if float(v.norm()) == 0.0:
            return 0.0
    return estimate


def _max_pool(module: nn.Module, shape, name, options) -> list[LayerBound]:
    two_d = isinstance(module, nn.MaxPool2d)
    pair = (lambda v: tuple(v) if isinstance(v, tuple) else (v, v)) if two_d else (lambda v: (1, _one(v)))
    settings = (module.kernel_size, module.stride or module.kernel_size, module.padding, module.dilation)
    kernel, stride, padding, dilation = (pair(v) for v in settings)
    spatial = tuple(shape[-2:]) if two_d else (1, shape[-1])
    ones = torch.ones(1, 1, *spatial, dtype=torch.float64)
    if module.ceil_mode:  # room for the partial windows at the end; windows there hold no extra inputs
        ones = F.pad(ones, (0, stride[1], 0, stride[0]))
    size = ones.shape[-2:]
    patches = F.unfold(ones, kernel, dilation=dilation, padding=padding, stride=stride)
    counts = F.fold(patches, size, kernel, dilation=dilation, padding=padding, stride=stride)
    multiplicity = float(counts[..., : spatial[0], : spatial[1]].max())
    upper = math.sqrt(multiplicity)
    return [LayerBound(name, type(module).__name__, upper * (1 + ROUNDING_MARGIN), 1.0,
                       note=f"each input in ≤ {multiplicity:g} windows")]


def _one(value) -> int:
    return value[0] if isinstance(value, tuple) else value


for _type in _AVERAGE:
    register_lipschitz_rule(_type)(_average)
for _type in (nn.MaxPool1d, nn.MaxPool2d):
    register_lipschitz_rule(_type)(_max_pool)
