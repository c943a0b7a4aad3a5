"""Spectral norms ‖A‖₂ of the linear layers of a residual function, on the input shape they actually see.

Each norm comes as a pair ``lower ≤ ‖A‖₂ ≤ upper``:

* ``upper`` is certified. Dense layers: the largest singular value from an SVD in float64. 2-D convolutions:
  a zero-padded convolution on an H×W input is a restriction of the circular convolution on the
  torus of side ≥ (H + pad_top + pad_bottom) × (W + pad_left + pad_right) to the input support and the
  output positions, so ‖A‖₂ ≤ max_ω σ_max(Ŵ(ω)) over that torus' frequencies, where Ŵ(ω) is the
  c_out × c_in matrix of the kernel's 2-D DFT (Sedghi, Gupta & Long 2019 for the circular case). A stride s
  is handled exactly by the polyphase form on a torus of side divisible by s (Ŵ(ω) is then
  c_out × c_in·s²). Both bounds are multiplied by ``1 + ROUNDING_MARGIN`` to cover float64 rounding.
* ``lower`` is ‖A v‖ / ‖v‖ for the vector v reached by power iteration on AᵀA (A applied by the layer's own
  convolution, Aᵀ by its autograd vector–Jacobian product, i.e. the transposed convolution). Power iteration
  converges from below, so this is a lower bound and never used as a bound on ‖A‖₂; the gap
  ``upper / lower`` says how tight the certificate is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

# Relative margin multiplied onto every certified norm: float64 SVD/FFT errors are O(1e-16 · size), far below.
ROUNDING_MARGIN = 1e-9
_FREQUENCY_CHUNK = 4096


class NotCertifiableError(ValueError):
    """A layer (or its configuration) has no certified Lipschitz bound in this package."""


@dataclass(frozen=True)
class OperatorNorm:
    """``lower ≤ ‖A‖₂ ≤ upper``; only ``upper`` is a certified bound (see the module docstring)."""

    upper: float
    lower: float
    method: str

    @property
    def gap(self) -> float:
        """upper / lower ≥ 1: how much the certificate may overestimate the norm."""
        return self.upper / self.lower if self.lower > 0 else math.inf


def linear_norm(weight: Tensor) -> OperatorNorm:
    """‖W‖₂ of a dense layer x ↦ W x (weight [out, in]) by SVD in float64."""
    if weight.dim() != 2:
        raise ValueError(f"a dense weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    matrix = weight.detach().to(device="cpu", dtype=torch.float64)
    _check_finite(matrix, "weight")
    _, singular_values, vh = torch.linalg.svd(matrix, full_matrices=False)
    top = float(singular_values[0]) if singular_values.numel() else 0.0
    lower = float(torch.linalg.vector_norm(matrix @ vh[0])) if singular_values.numel() else 0.0
    return OperatorNorm(upper=top * (1 + ROUNDING_MARGIN), lower=lower, method="svd")


def conv2d_norm(
    conv: nn.Conv2d,
    input_shape: tuple[int, int, int],
    *,
    iterations: int = 100,
    tolerance: float = 1e-8,
    seed: int = 0,
) -> OperatorNorm:
    """‖A‖₂ of the linear part of ``conv`` (bias dropped) acting on inputs of shape (C, H, W).

    Certified upper bound from the torus embedding (module docstring); lower bound by power iteration.
    Padding modes ``zeros`` and ``circular`` are certified; ``reflect``/``replicate`` are refused.
    """
    channels, height, width = _check_conv_input(conv, input_shape)
    upper = _circulant_upper_bound(conv, height, width)
    lower = _power_iteration_lower(conv, (channels, height, width), iterations, tolerance, seed)
    if lower > upper * (1 + 1e-6):
        raise RuntimeError(
            f"internal check failed: power iteration found ‖A v‖ = {lower:.9g} above the certified "
            f"bound {upper:.9g} for {conv}; please report this"
        )
    return OperatorNorm(upper=upper, lower=lower, method="fft-torus")


def _check_conv_input(conv: nn.Conv2d, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"Conv2d needs a per-sample input shape (C, H, W), got {tuple(input_shape)}")
    channels, height, width = (int(s) for s in input_shape)
    if channels != conv.in_channels:
        raise ValueError(f"{conv} expects {conv.in_channels} input channels, the input has {channels}")
    if conv.padding_mode not in ("zeros", "circular"):
        raise NotCertifiableError(
            f"padding_mode={conv.padding_mode!r} is not certified (only 'zeros' and 'circular')"
        )
    return channels, height, width


def _paddings(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    """(before, after) padding per spatial axis, as ``conv`` applies it (string paddings included)."""
    pads = []
    for axis in range(2):
        span = conv.dilation[axis] * (conv.kernel_size[axis] - 1)
        if conv.padding == "valid":
            pads.append((0, 0))
        elif conv.padding == "same":
            pads.append((span // 2, span - span // 2))
        else:
            pads.append((conv.padding[axis], conv.padding[axis]))
    return pads[0], pads[1]


def _full_kernel(conv: nn.Conv2d) -> Tensor:
    """The dilated kernel as a dense float64 [c_out, c_in, kh_eff, kw_eff] (groups made block-diagonal)."""
    weight = conv.weight.detach().to(device="cpu", dtype=torch.float64)
    _check_finite(weight, f"{conv} weight")
    c_out, c_in_group, kh, kw = weight.shape
    dh, dw = conv.dilation
    kernel = torch.zeros(c_out, conv.in_channels, dh * (kh - 1) + 1, dw * (kw - 1) + 1, dtype=torch.float64)
    out_per_group = c_out // conv.groups
    for g in range(conv.groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        cols = slice(g * c_in_group, (g + 1) * c_in_group)
        kernel[rows, cols, ::dh, ::dw] = weight[rows]
    return kernel


def _circulant_upper_bound(conv: nn.Conv2d, height: int, width: int) -> float:
    kernel = _full_kernel(conv)
    (top, bottom), (left, right) = _paddings(conv)
    stride_h, stride_w = conv.stride
    if conv.padding_mode == "circular":
        # Circular padding on the H×W torus: the outputs are distinct rows of that torus' (strided) circulant
        # only when the stride-1 output is no longer than the input and the stride divides the torus.
        if top + bottom > kernel.shape[2] - 1 or left + right > kernel.shape[3] - 1:
            raise NotCertifiableError(f"{conv}: circular padding wider than the kernel is not certified")
        if height % stride_h or width % stride_w:
            raise NotCertifiableError(f"{conv}: circular padding with a stride not dividing the input size")
        torus = (height, width)
    else:  # the smallest torus holding the padded input whose sides are multiples of the stride
        torus = (
            stride_h * math.ceil((height + top + bottom) / stride_h),
            stride_w * math.ceil((width + left + right) / stride_w),
        )
    if kernel.shape[2] > torus[0] or kernel.shape[3] > torus[1]:
        raise ValueError(f"{conv}: kernel larger than the padded input {torus}")
    c_out, c_in = kernel.shape[:2]
    padded = torch.zeros(c_out, c_in, *torus, dtype=torch.float64)
    padded[:, :, : kernel.shape[2], : kernel.shape[3]] = kernel
    # Polyphase form of a stride-s correlation on the torus N = sM: y[i] = Σ_r Σ_q w[sq + r] x[s(i + q) + r],
    # i.e. a stride-1 correlation on the M-torus from c_in·s² phase channels (a permutation of the input).
    coarse_h, coarse_w = torus[0] // stride_h, torus[1] // stride_w
    phases = (
        padded.reshape(c_out, c_in, coarse_h, stride_h, coarse_w, stride_w)
        .permute(0, 1, 3, 5, 2, 4)
        .reshape(c_out, c_in * stride_h * stride_w, coarse_h, coarse_w)
    )
    # A real kernel's spectrum is conjugate-symmetric: half of it holds every singular value.
    spectrum = torch.fft.rfft2(phases).permute(2, 3, 0, 1).reshape(-1, *phases.shape[:2])
    top_singular = max(
        float(torch.linalg.matrix_norm(chunk, ord=2).max()) for chunk in spectrum.split(_FREQUENCY_CHUNK)
    )
    return top_singular * (1 + ROUNDING_MARGIN)


def _power_iteration_lower(
    conv: nn.Conv2d, shape: tuple[int, int, int], iterations: int, tolerance: float, seed: int
) -> float:
    weight = conv.weight.detach().to(device="cpu", dtype=torch.float64)

    def operator(x: Tensor) -> Tensor:
        return conv._conv_forward(x, weight, None)  # the layer's own padding mode, stride, dilation, groups

    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(1, *shape, dtype=torch.float64, generator=generator)
    v /= torch.linalg.vector_norm(v)
    estimate = 0.0
    for _ in range(iterations):
        with torch.enable_grad():
            x = v.detach().requires_grad_(True)
            image = operator(x)
            (w,) = torch.autograd.grad(image, x, image.detach())  # AᵀA v: the transposed conv of A v
        norm = torch.linalg.vector_norm(w)
        if norm == 0:
            return 0.0
        v = w / norm
        with torch.no_grad():
            previous, estimate = estimate, float(torch.linalg.vector_norm(operator(v)))
        if abs(estimate - previous) <= tolerance * estimate:
            break
    return estimate


def _check_finite(tensor: Tensor, what: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} contains NaN or infinite values")


__all__ = ["ROUNDING_MARGIN", "NotCertifiableError", "OperatorNorm", "conv2d_norm", "linear_norm"]
