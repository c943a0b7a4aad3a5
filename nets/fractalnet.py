"""FractalNet (Larsson et al. 2017) and its Heun counterpart with identity paths.

FractalNet's expansion rule: f_1(z) = ReLU(BN(conv(z))), f_{C+1}(z) = ½(f_C∘f_C)(z) + ½f_1(z) (the join is
the mean; every f in the expansion has its own weights). Here nested joins are kept binary exactly as the
rule is written; Larsson et al.'s implementation merges consecutive joins into one mean over all columns,
which weighs the columns differently. Drop-path regularisation is not implemented.

Heun counterpart: with identity paths, the C = 2 join of two Euler steps E(y) = y + hF(y) and the identity,
½(E∘E)(y) + ½y = y + h/2·(F(y) + F(y + hF(y))), is exactly one Heun step (explicit trapezoid, order 2) —
:class:`nets.schemes.SchemeStep` with ``method="heun"``; ``fractalnet_heun`` is the CIFAR ResNet layout with
Heun blocks (see :mod:`nets.resnet`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from nets.classifier import ImageClassifier, check_positive_int, classifier_head, init_weights
from nets.registry import register_model
from nets.resnet import ResNet, conv3x3


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """f_1: the single-layer column."""
    return nn.Sequential(conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU())


class FractalBlock(nn.Module):
    """f_C with C = ``columns``: f_1 = conv-BN-ReLU, f_{C+1} = ½(f_C∘f_C) + ½f_1 (depth 2^(C−1) layers)."""

    def __init__(self, columns: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.columns = check_positive_int("columns", columns)
        self.shallow = conv_bn_relu(in_channels, out_channels)
        if columns > 1:
            self.deep_first = FractalBlock(columns - 1, in_channels, out_channels)
            self.deep_second = FractalBlock(columns - 1, out_channels, out_channels)

    def forward(self, z: Tensor) -> Tensor:
        if self.columns == 1:
            return self.shallow(z)
        return 0.5 * self.deep_second(self.deep_first(z)) + 0.5 * self.shallow(z)


class FractalNet(ImageClassifier):
    """3×3 stem → [FractalBlock(C) → 2×2 max-pool] per width → pool → linear."""

    def __init__(
        self,
        columns: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        widths = [check_positive_int("width", int(w)) for w in widths]
        body: list[nn.Module] = [nn.BatchNorm2d(widths[0]), nn.ReLU()]
        previous = widths[0]
        for width in widths:
            body += [FractalBlock(columns, previous, width), nn.MaxPool2d(2)]
            previous = width
        super().__init__(
            in_channels,
            conv3x3(in_channels, widths[0]),
            nn.Sequential(*body),
            classifier_head(widths[-1], num_classes),
            mean,
            std,
        )
        init_weights(self)


@register_model("fractalnet")
def fractalnet(
    columns: int = 3,
    *,
    widths: Sequence[int] = (32, 64, 128),
    in_channels: int = 3,
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> FractalNet:
    """FractalNet with ``columns`` columns per block (no identity paths, so no step size)."""
    return FractalNet(columns, widths, in_channels=in_channels, num_classes=num_classes, mean=mean, std=std)


@register_model("fractalnet_heun")
def fractalnet_heun(
    blocks_per_stage: int = 3,
    *,
    widths: Sequence[int] = (16, 32, 64),
    in_channels: int = 3,
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    step_size: float = 1.0,
) -> ResNet:
    """FractalNet's Heun counterpart: CIFAR ResNet layout whose same-shape blocks are Heun steps of size h."""
    return ResNet(
        blocks_per_stage,
        widths,
        in_channels=in_channels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        step_size=step_size,
        method="heun",
    )
