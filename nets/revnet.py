"""RevNet (Gomez et al. 2017): additive coupling as an Euler step on a coupled system, with exact inverse.

The state is split along channels into (X, Y). One coupling block is

    X' = X + h·f1(Y),   Y' = Y + h·f2(X'),

two explicit Euler steps (``stability.step(..., "euler")``) of the partitioned system dX/dt = f1(Y),
dY/dt = f2(X), each with the other half frozen — symplectic Euler. Its inverse takes the same Euler steps
with step −h in reverse order: Y = Y' − h·f2(X'), X = X' − h·f1(Y); it reconstructs the input up to
floating-point rounding of the additions (f1, f2 are evaluated on identical tensors both ways; with
BatchNorm in training mode that also means identical batch statistics). Stride-2 stage transitions are not
reversible: they are plain projection blocks (:class:`nets.resnet.ProjectionBlock`). Memory-saving
backpropagation by reconstruction is not implemented: autograd stores activations as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import stability
from nets.classifier import ImageClassifier, check_positive_int, classifier_head, init_weights
from nets.registry import register_model
from nets.resnet import ProjectionBlock, ZeroPadShortcut, conv3x3, residual_function
from nets.schemes import check_step_size


def _frozen(value: Tensor):
    """The vector field (t, state) ↦ value: the other half of a partitioned system, held fixed."""
    return lambda t, state: value


class AdditiveCoupling(nn.Module):
    """(X, Y) ↦ (X + h·f1(Y), Y + h·f2(X')) on the two channel halves; :meth:`inverse` undoes it."""

    settable_step_size = True

    def __init__(self, f1: nn.Module, f2: nn.Module, step_size: float = 1.0) -> None:
        super().__init__()
        self.f1, self.f2 = f1, f2
        self.step_size = check_step_size(step_size)

    @staticmethod
    def _halves(state: Tensor) -> tuple[Tensor, Tensor]:
        if state.dim() < 2 or state.shape[1] % 2:
            raise ValueError(
                f"coupling needs an even number of channels in dim 1, got shape {tuple(state.shape)}"
            )
        return state.chunk(2, dim=1)

    def forward(self, state: Tensor) -> Tensor:
        x, y = self._halves(state)
        h = self.step_size
        x_new = stability.step(_frozen(self.f1(y)), 0.0, x, h, method="euler")
        y_new = stability.step(_frozen(self.f2(x_new)), 0.0, y, h, method="euler")
        return torch.cat([x_new, y_new], dim=1)

    def inverse(self, state: Tensor) -> Tensor:
        """The input that ``forward`` maps to ``state`` (Euler steps with −h in reverse order)."""
        x_new, y_new = self._halves(state)
        h = self.step_size
        y = stability.step(_frozen(self.f2(x_new)), 0.0, y_new, -h, method="euler")
        x = stability.step(_frozen(self.f1(y)), 0.0, x_new, -h, method="euler")
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"step_size={self.step_size:g}"


class ReversibleSequence(nn.Sequential):
    """Couplings applied in order; :meth:`inverse` applies their inverses in reverse order."""

    def inverse(self, state: Tensor) -> Tensor:
        for block in reversed(self):
            state = block.inverse(state)
        return state


class RevNet(ImageClassifier):
    """3×3 stem → stages of ``blocks_per_stage`` couplings at ``widths`` channels (halves of width/2),
    stride-2 projection blocks between stages → BN → ReLU → pool → linear. f1, f2 are full pre-activation
    residual functions (BN-ReLU-conv-BN-ReLU-conv)."""

    def __init__(
        self,
        blocks_per_stage: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        step_size: float = 1.0,
    ) -> None:
        check_positive_int("blocks_per_stage", blocks_per_stage)
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        widths = [check_positive_int("width", int(w)) for w in widths]
        if any(w % 2 for w in widths):
            raise ValueError(f"RevNet widths must be even (two halves), got {widths}")
        h = check_step_size(step_size)
        stages: list[nn.Module] = []
        for stage, width in enumerate(widths):
            if stage > 0:
                pre = nn.Sequential(nn.BatchNorm2d(widths[stage - 1]), nn.ReLU())
                branch = residual_function("preact", widths[stage - 1], width, stride=2)[2:]
                stages.append(ProjectionBlock(branch, ZeroPadShortcut(widths[stage - 1], width, 2), h, pre))
            half = width // 2
            couplings = [
                AdditiveCoupling(
                    residual_function("preact", half, half), residual_function("preact", half, half), h
                )
                for _ in range(blocks_per_stage)
            ]
            stages.append(ReversibleSequence(*couplings))
        super().__init__(
            in_channels,
            conv3x3(in_channels, widths[0]),
            nn.Sequential(*stages),
            classifier_head(widths[-1], num_classes, nn.BatchNorm2d(widths[-1])),
            mean,
            std,
        )
        init_weights(self)


@register_model("revnet")
def revnet(
    blocks_per_stage: int = 3,
    *,
    widths: Sequence[int] = (32, 64, 128),
    in_channels: int = 3,
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    step_size: float = 1.0,
) -> RevNet:
    """RevNet with additive-coupling (symplectic Euler) blocks of step size h."""
    return RevNet(
        blocks_per_stage,
        widths,
        in_channels=in_channels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        step_size=step_size,
    )
