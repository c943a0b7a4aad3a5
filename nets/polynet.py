"""PolyNet (Zhang et al. 2017) as an approximate backward-Euler scheme, next to the true backward-Euler net.

Same-shape blocks are either the poly-2 block y + hF(y) + hF(hF(y)) (:class:`nets.schemes.PolyStep`, the
Neumann series of (I − hF)⁻¹ truncated after (hF)²) or the implicit Euler step y_{n+1} = y + hF(y_{n+1})
solved by ``stability`` (:class:`nets.schemes.BackwardEulerStep`). Layout as the CIFAR ResNets: a 3×3 stem,
stages of ``widths`` channels, stride-2 projection blocks (not ODE steps) between stages.

F here is normalization-free, F(y) = conv(ReLU(conv(ReLU(y)))) with biases, so that it is one fixed function
in training and evaluation: BatchNorm would give F's two uses in the poly-2 block different batch statistics
(and mix them in its running averages), and a per-sample norm would rescale hF(y) and undo the h inside
F(hF(y)). Its last convolution starts at zero (Fixup-style), so every block starts as the identity. The
implicit step's fixed point needs h·Lip(F) small enough for ``stability``'s nonlinear solver to converge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nets.classifier import ImageClassifier, check_positive_int, classifier_head, init_weights
from nets.registry import register_model
from nets.resnet import ProjectionBlock, ZeroPadShortcut, conv3x3, residual_function
from nets.schemes import BackwardEulerStep, PolyStep, check_step_size

BLOCKS = {"poly": PolyStep, "backward_euler": BackwardEulerStep}


class PlainResidual(nn.Sequential):
    """F(y) = conv(ReLU(conv(ReLU(y)))) with biases and no normalization; the last conv starts at zero."""

    def __init__(self, channels: int, total_blocks: int = 1) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.total_blocks = total_blocks
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fixup init: first conv Kaiming × L^(-1/2) (L blocks, 2 layers per branch), last conv zero."""
        first, last = self[1], self[3]
        nn.init.kaiming_normal_(first.weight, nonlinearity="relu")
        with torch.no_grad():
            first.weight.mul_(self.total_blocks**-0.5)
        nn.init.zeros_(first.bias)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)


class PolyNet(ImageClassifier):
    """CIFAR-style PolyNet; same-shape blocks are ``block`` ("poly" or "backward_euler") steps of size h."""

    def __init__(
        self,
        blocks_per_stage: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        *,
        block: str = "poly",
        in_channels: int = 3,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        step_size: float = 1.0,
    ) -> None:
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        check_positive_int("blocks_per_stage", blocks_per_stage)
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        widths = [check_positive_int("width", int(w)) for w in widths]
        h = check_step_size(step_size)
        total = blocks_per_stage * len(widths)
        body: list[nn.Module] = [nn.BatchNorm2d(widths[0])]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                if stage > 0 and index == 0:
                    branch = residual_function("euler", widths[stage - 1], width, stride=2)
                    shortcut = ZeroPadShortcut(widths[stage - 1], width, 2)
                    body.append(ProjectionBlock(branch, shortcut, h))
                else:
                    body.append(BLOCKS[block](PlainResidual(width, total), h))
        super().__init__(
            in_channels,
            conv3x3(in_channels, widths[0]),
            nn.Sequential(*body),
            classifier_head(widths[-1], num_classes),
            mean,
            std,
        )
        init_weights(self)
        for module in self.modules():
            if isinstance(module, PlainResidual):
                module.reset_parameters()


def _factory(block: str):
    def factory(
        blocks_per_stage: int = 3,
        *,
        widths: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        step_size: float = 1.0,
    ) -> PolyNet:
        """PolyNet with ``blocks_per_stage`` same-shape blocks per stage (see the module docstring)."""
        return PolyNet(
            blocks_per_stage,
            widths,
            block=block,
            in_channels=in_channels,
            num_classes=num_classes,
            mean=mean,
            std=std,
            step_size=step_size,
        )

    return factory


polynet = register_model("polynet")(_factory("poly"))
polynet.__doc__ = "PolyNet: poly-2 blocks y + hF(y) + hF(hF(y)) (approximate backward Euler), step size h."
polynet_implicit = register_model("polynet_implicit")(_factory("backward_euler"))
polynet_implicit.__doc__ = (
    "PolyNet's implicit counterpart: backward-Euler blocks solved by stability, step size h."
)
