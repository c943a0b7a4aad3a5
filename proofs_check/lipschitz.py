"""Certified Lipschitz constants K of residual functions: |f(y) − f(z)| ≤ K |y − z| per sample, 2-norm.

For a composition f = f_L ∘ … ∘ f_1, K ≤ Π_l Lip(f_l). Each layer's constant:

* ``nn.Linear``, ``nn.Conv2d``: the certified spectral norm on the actual input shape
  (``operator_norms``); the bias does not change differences.
* activations: ReLU, Tanh, Hardtanh, Softplus(β): 1; LeakyReLU(a): max(1, |a|); ELU(α): max(1, α);
  Sigmoid: 1/4; SiLU: 1.0999 (sup of its derivative, 1.09984); GELU: 1.1290 (sup Φ(x) + xφ(x) = 1.12890,
  tanh approximation 1.12899); Mish: 1.0885 (1.08850).
* ``BatchNorm`` in eval mode is the affine map x ↦ γ(x − μ)/√(σ² + eps) + β: max_c |γ_c|/√(σ²_c + eps).
  In training mode it couples the samples of a batch and is refused.
* ``GroupNorm``/``LayerNorm``/``InstanceNorm`` divide by the input's own standard deviation: their Jacobian
  at x has norm |γ|/√(var(x) + eps), so the only global constant is max|γ|/√eps — valid but usually
  vacuous (≈ 316·|γ| for eps = 1e-5). They are refused by default (``norm_layers="refuse"``);
  ``norm_layers="worst_case"`` certifies that global constant and records the assumption.
* ``Dropout`` (eval), ``Identity``, ``Flatten``: 1. ``nn.Sequential`` recurses.
* Average and max pooling: ``proofs_check.pooling`` (Schur test on the layer's own row and column sums;
  √(windows per input) for max pooling).

Anything else raises ``NotCertifiableError`` naming the layer; ``register_lipschitz_rule`` adds rules
(e.g. for a block whose ``forward`` is not a plain sequence).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from proofs_check.operator_norms import (
    ROUNDING_MARGIN,
    NotCertifiableError,
    conv2d_norm,
    linear_norm,
)

NORM_LAYER_POLICIES = ("refuse", "worst_case")


@dataclass(frozen=True)
class LayerBound:
    """One layer's certified constant ``upper``; ``lower`` is a lower bound of it when known (else None).

    ``assumption`` is non-empty when ``upper`` holds only under a stated assumption (see ``norm_layers``).
    """

    name: str
    kind: str
    upper: float
    lower: float | None = None
    note: str = ""
    assumption: str = ""


@dataclass(frozen=True)
class LipschitzCertificate:
    """K = ``upper`` bounds f's Lipschitz constant in the per-sample 2-norm on inputs of ``input_shape``.

    ``layers`` itemises the product; ``assumptions`` lists anything the certificate relies on beyond the
    weights themselves (empty for a fully certified bound).
    """

    upper: float
    input_shape: tuple[int, ...]
    layers: tuple[LayerBound, ...]
    assumptions: tuple[str, ...] = field(default_factory=tuple)

    def table(self) -> str:
        """A plain-text breakdown, one layer per line."""
        lines = [f"certified K ≤ {self.upper:.6g} on per-sample input shape {self.input_shape}"]
        for layer in self.layers:
            lower = f"  (≥ {layer.lower:.6g})" if layer.lower is not None else ""
            note = f"  [{layer.note}]" if layer.note else ""
            lines.append(f"  {layer.name:<28} {layer.kind:<14} ≤ {layer.upper:.6g}{lower}{note}")
        lines += [f"  assumption: {a}" for a in self.assumptions]
        return "\n".join(lines)


# A rule maps (module, per-sample input shape, name, options) to its layer bounds; output shapes are found by
# running the module on zeros.
LipschitzRule = Callable[[nn.Module, tuple[int, ...], str, "_Options"], list[LayerBound]]
_RULES: dict[type, LipschitzRule] = {}


@dataclass(frozen=True)
class _Options:
    norm_layers: str
    iterations: int
    seed: int


def register_lipschitz_rule(module_type: type) -> Callable[[LipschitzRule], LipschitzRule]:
    """Decorator: ``rule(module, input_shape, name, options) -> list[LayerBound]`` for ``module_type``.

    Use ``certify_submodule(child, shape, name, options)`` inside a rule to recurse into children.
    """

    def decorator(rule: LipschitzRule) -> LipschitzRule:
        _RULES[module_type] = rule
        return rule

    return decorator


def lipschitz_upper(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    norm_layers: str = "refuse",
    iterations: int = 100,
    seed: int = 0,
) -> LipschitzCertificate:
    """Certified K with |module(y) − module(z)| ≤ K |y − z| for every pair of samples of ``input_shape``.

    ``input_shape`` is one sample's shape (no batch dimension), e.g. (C, H, W): conv norms depend on it.
    ``iterations``/``seed`` drive the power iterations that report each layer's lower estimate.
    """
    if norm_layers not in NORM_LAYER_POLICIES:
        raise ValueError(f"norm_layers must be one of {NORM_LAYER_POLICIES}, got {norm_layers!r}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be a non-empty per-sample shape of positive sizes, got {shape}")
    options = _Options(norm_layers=norm_layers, iterations=iterations, seed=seed)
    layers = certify_submodule(module, shape, type(module).__name__, options)
    upper = math.prod(layer.upper for layer in layers)
    assumptions = tuple(layer.assumption for layer in layers if layer.assumption)
    return LipschitzCertificate(upper=upper, input_shape=shape, layers=tuple(layers), assumptions=assumptions)


def certify_submodule(
    module: nn.Module, shape: tuple[int, ...], name: str, options: _Options
) -> list[LayerBound]:
    """The layer bounds of ``module`` on per-sample input ``shape`` (dispatch on the registered rules)."""
    for module_type in type(module).__mro__:
        if module_type in _RULES:
            return _RULES[module_type](module, shape, name, options)
    raise NotCertifiableError(
        f"no Lipschitz rule for layer {name!r} of type {type(module).__name__}; pass an nn.Sequential of "
        f"supported layers or add one with proofs_check.register_lipschitz_rule"
    )


def output_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample output shape of ``module`` on per-sample input ``shape`` (one forward pass on zeros)."""
    parameter = next(module.parameters(), None)
    buffer = next(module.buffers(), None)
    reference = parameter if parameter is not None else buffer
    kwargs = {"dtype": reference.dtype, "device": reference.device} if reference is not None else {}
    with torch.no_grad():
        return tuple(module(torch.zeros(1, *shape, **kwargs)).shape[1:])


# --- rules ---------------------------------------------------------------------------------------------


@register_lipschitz_rule(nn.Sequential)
def _sequential(module: nn.Sequential, shape, name, options) -> list[LayerBound]:
    layers: list[LayerBound] = []
    for child_name, child in module.named_children():
        layers += certify_submodule(child, shape, f"{name}.{child_name}", options)
        shape = output_shape(child, shape)
    return layers


@register_lipschitz_rule(nn.Linear)
def _linear(module: nn.Linear, shape, name, options) -> list[LayerBound]:
    norm = linear_norm(module.weight)
    return [LayerBound(name, "Linear", norm.upper, norm.lower)]


@register_lipschitz_rule(nn.Conv2d)
def _conv2d(module: nn.Conv2d, shape, name, options) -> list[LayerBound]:
    norm = conv2d_norm(module, shape, iterations=options.iterations, seed=options.seed)
    return [
        LayerBound(name, "Conv2d", norm.upper, norm.lower, f"certificate/power-iteration gap {norm.gap:.4f}")
    ]


_ACTIVATIONS: dict[type, Callable[[nn.Module], float]] = {
    nn.ReLU: lambda m: 1.0,
    nn.ReLU6: lambda m: 1.0,
    nn.Tanh: lambda m: 1.0,
    nn.Hardtanh: lambda m: 1.0,
    nn.Softplus: lambda m: 1.0,
    nn.Identity: lambda m: 1.0,
    nn.Flatten: lambda m: 1.0,
    nn.Unflatten: lambda m: 1.0,
    nn.LeakyReLU: lambda m: max(1.0, abs(m.negative_slope)),
    nn.ELU: lambda m: max(1.0, m.alpha),
    nn.Sigmoid: lambda m: 0.25,
    nn.SiLU: lambda m: 1.0999,
    nn.GELU: lambda m: 1.1290,
    nn.Mish: lambda m: 1.0885,
}


def _activation(module: nn.Module, shape, name, options) -> list[LayerBound]:
    return [LayerBound(name, type(module).__name__, _ACTIVATIONS[type(module)](module))]


for _type in _ACTIVATIONS:
    register_lipschitz_rule(_type)(_activation)


@register_lipschitz_rule(nn.Dropout)
def _dropout(module: nn.Dropout, shape, name, options) -> list[LayerBound]:
    if module.training and module.p > 0:
        raise NotCertifiableError(f"{name}: Dropout in training mode is random; call .eval() first")
    return [LayerBound(name, "Dropout", 1.0, 1.0)]


@register_lipschitz_rule(nn.modules.batchnorm._BatchNorm)
def _batch_norm(module: nn.modules.batchnorm._BatchNorm, shape, name, options) -> list[LayerBound]:
    if module.training or module.running_var is None:
        raise NotCertifiableError(
            f"{name}: BatchNorm with batch statistics couples the samples of a batch; call .eval() "
            f"(with running statistics) first"
        )
    scale = 1.0 / torch.sqrt(module.running_var.detach().double() + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach().double().abs()
    constant = float(scale.max())
    return [LayerBound(name, type(module).__name__, constant * (1 + ROUNDING_MARGIN), constant)]


def _normalisation(module: nn.Module, shape, name, options) -> list[LayerBound]:
    kind = type(module).__name__
    if isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
        if not module.training:  # eval with running statistics: an affine map, exactly like BatchNorm
            return _batch_norm(module, shape, name, options)
    if options.norm_layers == "refuse":
        raise NotCertifiableError(
            f"{name}: {kind} divides by the input's own standard deviation, so its Lipschitz constant is "
            f"only bounded by max|γ|/√eps (vacuous in practice); pass norm_layers='worst_case' to certify "
            f"that constant anyway"
        )
    weight = getattr(module, "weight", None)
    gamma = 1.0 if weight is None else float(weight.detach().double().abs().max())
    constant = gamma / math.sqrt(module.eps)
    assumption = f"{name}: {kind} taken at its worst case var(x) → 0, |J| ≤ max|γ|/√eps"
    return [LayerBound(name, kind, constant * (1 + ROUNDING_MARGIN), None, assumption=assumption)]


for _type in (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm):
    register_lipschitz_rule(_type)(_normalisation)


__all__ = [
    "LayerBound",
    "LipschitzCertificate",
    "NotCertifiableError",
    "certify_submodule",
    "lipschitz_upper",
    "output_shape",
    "register_lipschitz_rule",
]
