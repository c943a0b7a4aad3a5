"""``nets`` integration: certified constants for its blocks, and a network's body as a sequence of steps.

Per-block Lipschitz constants (K_F = certified constant of the block's residual function F, h its step size):

* ``SchemeStep`` (ResNet = Euler, FractalNet-Heun = Heun, …): ``bounds.step_factor(method, h, K_F)``.
* ``PolyStep`` y + hF(y) + hF(hF(y)): 1 + hK_F + (hK_F)².
* ``BackwardEulerStep``: 1/(1 − hK_F) for hK_F < 1 (exact only up to the tolerance of the nonlinear solve).
* ``ProjectionBlock`` P(y) + hF'(y) (stage transitions, not ODE steps): Lip(pre)·(Lip(P) + h·K_F');
  the option-A shortcut (subsample, zero channels) is 1-Lipschitz.
* ``AdditiveCoupling`` (RevNet): ‖M‖₂, M = [[1, hK_1], [hK_2, 1 + h²K_1K_2]] (``bounds.revnet_step_matrix``).
* ``ODEBlock`` with a fixed ``step_size``: the product of its steps' factors; adaptive blocks are refused
  (step selection is not Lipschitz: use ``verify.verify_adaptive`` on ``block.func``).
* ``ODEFunc``: GroupNorm layers — refused unless ``norm_layers="worst_case"`` (see ``lipschitz``);
  ``ConcatTimeConv2d`` is Lipschitz in y with the norm of its convolution restricted to the y channels.
* ``Normalize``: max_c 1/std_c.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nets.normalization import Normalize
from nets.odenet import ConcatTimeConv2d, ODEBlock, ODEFunc
from nets.resnet import ProjectionBlock, ZeroPadShortcut
from nets.revnet import AdditiveCoupling, ReversibleSequence
from nets.schemes import BackwardEulerStep, PolyStep, SchemeStep, autonomous
from proofs_check.bounds import revnet_step_matrix, step_factor
from proofs_check.lipschitz import (
    LayerBound,
    NotCertifiableError,
    certify_submodule,
    lipschitz_upper,
    output_shape,
    register_lipschitz_rule,
)
from proofs_check.operator_norms import ROUNDING_MARGIN
from proofs_check.verify import CertifiedStep, backward_euler_defect


def _constant(module: nn.Module, shape: tuple[int, ...], name: str, options) -> float:
    return math.prod(layer.upper for layer in certify_submodule(module, shape, name, options))


@register_lipschitz_rule(SchemeStep)
def _scheme_step(module: SchemeStep, shape, name, options) -> list[LayerBound]:
    k = _constant(module.residual, shape, f"{name}.residual", options)
    factor = step_factor(module.method, module.step_size, k)
    return [
        LayerBound(name, f"{module.method} step", factor, None, f"K_F ≤ {k:.6g}, h = {module.step_size:g}")
    ]


@register_lipschitz_rule(PolyStep)
def _poly_step(module: PolyStep, shape, name, options) -> list[LayerBound]:
    hk = module.step_size * _constant(module.residual, shape, f"{name}.residual", options)
    return [LayerBound(name, "poly-2 step", 1 + hk + hk * hk, None, f"hK_F ≤ {hk:.6g}")]


@register_lipschitz_rule(BackwardEulerStep)
def _backward_euler_step(module: BackwardEulerStep, shape, name, options) -> list[LayerBound]:
    k = _constant(module.residual, shape, f"{name}.residual", options)
    if module.step_size * k >= 1:
        raise NotCertifiableError(
            f"{name}: backward Euler's bound needs hK < 1, got hK ≤ {module.step_size * k:.4g}"
        )
    factor = step_factor("backward_euler", module.step_size, k)
    return [LayerBound(name, "backward_euler step", factor, None, f"K_F ≤ {k:.6g}, h = {module.step_size:g}")]


@register_lipschitz_rule(ProjectionBlock)
def _projection(module: ProjectionBlock, shape, name, options) -> list[LayerBound]:
    pre = 1.0
    if module.preactivation is not None:
        pre = _constant(module.preactivation, shape, f"{name}.preactivation", options)
        shape = output_shape(module.preactivation, shape)
    shortcut = _constant(module.shortcut, shape, f"{name}.shortcut", options)
    branch = _constant(module.branch, shape, f"{name}.branch", options)
    factor = pre * (shortcut + module.step_size * branch)
    return [LayerBound(name, "projection", factor, None, f"P ≤ {shortcut:.4g}, K_F' ≤ {branch:.4g}")]


@register_lipschitz_rule(ZeroPadShortcut)
def _zero_pad(module: ZeroPadShortcut, shape, name, options) -> list[LayerBound]:
    return [LayerBound(name, "subsample+pad", 1.0, 1.0)]


@register_lipschitz_rule(Normalize)
def _normalize(module: Normalize, shape, name, options) -> list[LayerBound]:
    if module.std is None:
        return [LayerBound(name, "Normalize", 1.0, 1.0)]
    constant = float((1.0 / module.std.double()).max())
    return [LayerBound(name, "Normalize", constant * (1 + ROUNDING_MARGIN), constant)]


@register_lipschitz_rule(AdditiveCoupling)
def _coupling(module: AdditiveCoupling, shape, name, options) -> list[LayerBound]:
    if shape[0] % 2:
        raise ValueError(f"{name}: coupling needs an even channel count, got shape {shape}")
    half = (shape[0] // 2, *shape[1:])
    k1 = _constant(module.f1, half, f"{name}.f1", options)
    k2 = _constant(module.f2, half, f"{name}.f2", options)
    matrix = revnet_step_matrix(module.step_size, k1, k2)
    factor = float(np.linalg.norm(matrix, 2)) * (1 + ROUNDING_MARGIN)
    return [LayerBound(name, "revnet coupling", factor, None, f"K_1 ≤ {k1:.4g}, K_2 ≤ {k2:.4g}")]


@register_lipschitz_rule(ConcatTimeConv2d)
def _concat_time_conv(module: ConcatTimeConv2d, shape, name, options) -> list[LayerBound]:
    conv = module.conv
    y_part = nn.Conv2d(
        shape[0],
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=False,
        padding_mode=conv.padding_mode,
        dtype=conv.weight.dtype,
        device=conv.weight.device,
    )
    with torch.no_grad():
        y_part.weight.copy_(conv.weight[:, : shape[0]])
    return certify_submodule(y_part, shape, f"{name}.conv[y channels]", options)


@register_lipschitz_rule(ODEFunc)
def _ode_func(module: ODEFunc, shape, name, options) -> list[LayerBound]:
    layers: list[LayerBound] = []
    for index, (norm, conv) in enumerate(zip(module.norms, module.convs)):
        layers += certify_submodule(norm, shape, f"{name}.norms.{index}", options)
        layers += certify_submodule(module.relu, shape, f"{name}.relu", options)
        layers += certify_submodule(conv, shape, f"{name}.convs.{index}", options)
    layers += certify_submodule(module.norms[-1], shape, f"{name}.norms.{len(module.convs)}", options)
    return layers


@register_lipschitz_rule(ODEBlock)
def _ode_block(module: ODEBlock, shape, name, options) -> list[LayerBound]:
    if module.step_size is None:
        raise NotCertifiableError(
            f"{name}: an adaptive ODE block is not a fixed map (step selection is not Lipschitz); use "
            f"proofs_check.verify_adaptive on its func, or give the block a fixed step_size"
        )
    k = _constant(module.func, shape, f"{name}.func", options)
    n = max(1, math.ceil(module.t1 / module.step_size - 1e-9))
    sizes = [module.step_size] * (n - 1) + [module.t1 - (n - 1) * module.step_size]
    factor = math.prod(step_factor(module.method, h, k) for h in sizes)
    return [LayerBound(name, f"{module.method} ODE block", factor, None, f"K_f ≤ {k:.6g}, {n} steps")]


# --- a network's body as certified steps ------------------------------------------------------------------


def flatten_blocks(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks of a body in order, descending into plain ``nn.Sequential`` containers."""
    if type(module) in (nn.Sequential, ReversibleSequence):
        blocks: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            blocks += [
                (f"{name}.{inner}" if inner else name, block) for inner, block in flatten_blocks(child)
            ]
        return blocks
    return [("", module)]


def body_steps(
    body: nn.Module, input_shape: Sequence[int], *, norm_layers: str = "refuse", seed: int = 0
) -> tuple[list[CertifiedStep], list[str]]:
    """(steps, kinds): each block of ``body`` as a ``CertifiedStep`` with its certified constant.

    Blocks with a ``step_size`` advance time by h; other layers (BatchNorm, ReLU, …) take zero time.
    """
    shape = tuple(int(s) for s in input_shape)
    steps, kinds, t = [], [], 0.0
    for name, block in flatten_blocks(body):
        certificate = lipschitz_upper(block, shape, norm_layers=norm_layers, seed=seed)
        h = float(getattr(block, "step_size", None) or 0.0)
        defect = None
        if isinstance(block, BackwardEulerStep):  # solved to a tolerance: bound the solve's defect
            contraction = 1 - 1 / certificate.upper  # factor = 1 / (1 − hK)
            defect = backward_euler_defect(autonomous(block.residual), 0.0, h, contraction / h)
        steps.append(CertifiedStep(block, t, h, certificate.upper, defect))
        kinds.append(
            f"{name}:{certificate.layers[0].kind if len(certificate.layers) == 1 else type(block).__name__}"
        )
        t += h
        shape = output_shape(block, shape)
    return steps, kinds


def body_input(model: nn.Module, images: Tensor) -> Tensor:
    """The state a classifier's body starts from: ``model.first_layer(images)`` (normalize + stem conv)."""
    if not hasattr(model, "first_layer") or not hasattr(model, "body"):
        raise ValueError(f"{type(model).__name__} is not a nets ImageClassifier (needs first_layer and body)")
    with torch.no_grad():
        return model.first_layer(images)


def revnet_stage(
    stage: nn.Module, input_shape: Sequence[int], *, seed: int = 0
) -> tuple[list[nn.Module], list[np.ndarray], list[float]]:
    """(couplings, matrices M_i, step sizes) of the ``AdditiveCoupling`` blocks of one RevNet stage, for
    ``verify.verify_coupled``; ``input_shape`` is the per-sample shape that stage sees."""
    shape = tuple(int(s) for s in input_shape)
    half = (shape[0] // 2, *shape[1:])
    couplings = [m for m in stage.children() if isinstance(m, AdditiveCoupling)]
    if not couplings:
        raise ValueError(f"{type(stage).__name__} has no AdditiveCoupling children")
    matrices = [
        revnet_step_matrix(
            m.step_size,
            lipschitz_upper(m.f1, half, seed=seed).upper,
            lipschitz_upper(m.f2, half, seed=seed).upper,
        )
        for m in couplings
    ]
    return couplings, matrices, [m.step_size for m in couplings]


__all__ = ["body_input", "body_steps", "flatten_blocks", "revnet_stage"]
