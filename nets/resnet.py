"""ResNets whose same-shape blocks are explicit Euler steps y + h·F(y) (``stability.step(..., "euler")``).

CIFAR ResNet-n (He et al. 2016a): a 3×3 stem, three stages of 16/32/64 channels at 32/16/8 px with
k = (n − 2)/6 blocks each (ResNet-20: k = 3, ResNet-56: k = 9), global pooling and a linear layer.
PreAct-ResNet18 (He et al. 2016b): four stages of 64/128/256/512 channels, two blocks each.

Residual functions (``variant``):
- ``"euler"`` (default): F(y) = BN(conv(ReLU(BN(conv(ReLU(y)))))) — He et al. 2016b's "ReLU-only
  pre-activation" unit, so that the block is *exactly* the Euler step y + h·F(y);
- ``"original"``: the 2016a unit, ReLU(y + h·F(y)) with F(y) = BN(conv(ReLU(BN(conv(y))))) — an Euler step
  followed by a ReLU projection, not an ODE step on its own;
- ``"preact"``: full pre-activation F(y) = conv(ReLU(BN(conv(ReLU(BN(y)))))), again exactly y + h·F(y).

The first block of a stage that halves the resolution and widens the channels is *not* an ODE step (input
and output live in different spaces): it is a plain projection block P(y) + h·F'(y), with P the option-A
shortcut (subsample, zero-pad channels) or option B (1×1 conv + BN), and h scaling its branch like every
other block so that one h governs the whole network. With BatchNorm in F, training-mode blocks are Euler
steps of a field that also depends on the batch statistics (see ``nets.schemes``). ``method`` swaps the
Euler step for another explicit ``stability`` scheme of the same F (e.g. ``"heun"``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from nets.classifier import ImageClassifier, check_positive_int, classifier_head, init_weights
from nets.registry import register_model
from nets.schemes import SchemeStep, check_step_size

VARIANTS = ("euler", "original", "preact")
SHORTCUTS = ("A", "B")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def residual_function(variant: str, in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """The residual branch F of ``variant`` (module docstring); stride/width change only in transitions."""
    relu = nn.ReLU
    if variant == "euler":
        layers = [
            relu(),
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            relu(),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        ]
    elif variant == "original":
        layers = [
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            relu(),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        ]
    elif variant == "preact":
        layers = [
            nn.BatchNorm2d(in_channels),
            relu(),
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            relu(),
            conv3x3(out_channels, out_channels),
        ]
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return nn.Sequential(*layers)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero channels appended (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option-A shortcut cannot reduce channels")
        self.pad, self.stride = out_channels - in_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.pad))


class ProjectionBlock(nn.Module):
    """P(y) + h·F'(y) for a shape-changing block (not an ODE step: P maps between different spaces).

    With ``preactivation`` (full pre-activation ResNets) both paths read preactivation(y), as in He et al.
    2016b. ``settable_step_size`` lets :func:`nets.schemes.set_step_size` change h here too.
    """

    settable_step_size = True

    def __init__(
        self,
        branch: nn.Module,
        shortcut: nn.Module,
        step_size: float = 1.0,
        preactivation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.preactivation = preactivation
        self.branch, self.shortcut = branch, shortcut
        self.step_size = check_step_size(step_size)

    def forward(self, y: Tensor) -> Tensor:
        if self.preactivation is not None:
            y = self.preactivation(y)
        return self.shortcut(y) + self.branch(y) * self.step_size

    def extra_repr(self) -> str:
        return f"step_size={self.step_size:g}"


def _shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    if kind == "B":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {kind!r}")


class ResNet(ImageClassifier):
    """Stages of ``blocks_per_stage`` blocks at ``widths``; same-shape blocks are ``method`` steps of size h.

    Stage i > 0 starts with a stride-2 :class:`ProjectionBlock`; the stem is a 3×3 conv of stride
    ``stem_stride`` to ``widths[0]`` channels. Inputs are images in [0, 1], normalized by ``mean``/``std``.
    """

    def __init__(
        self,
        blocks_per_stage: int | Sequence[int],
        widths: Sequence[int] = (16, 32, 64),
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        step_size: float = 1.0,
        method: str = "euler",
        variant: str = "euler",
        shortcut: str = "A",
        stem_stride: int = 1,
    ) -> None:
        widths = [check_positive_int("width", int(w)) for w in widths]
        counts = (
            [blocks_per_stage] * len(widths) if isinstance(blocks_per_stage, int) else list(blocks_per_stage)
        )
        if not widths or len(counts) != len(widths):
            raise ValueError(f"need one block count per stage: widths={widths}, blocks={blocks_per_stage!r}")
        for count in counts:
            check_positive_int("blocks per stage", count)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        h = check_step_size(step_size)

        first_conv = nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False)
        body: list[nn.Module] = []
        if variant == "euler":
            body.append(nn.BatchNorm2d(widths[0]))
        elif variant == "original":
            body += [nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for stage, (width, count) in enumerate(zip(widths, counts)):
            for index in range(count):
                if stage > 0 and index == 0:
                    block = self._projection(variant, shortcut, widths[stage - 1], width, h)
                else:
                    block = SchemeStep(residual_function(variant, width, width), h, method)
                body.append(block)
                if variant == "original":
                    body.append(nn.ReLU())
        head = classifier_head(
            widths[-1], num_classes, nn.BatchNorm2d(widths[-1]) if variant == "preact" else None
        )
        super().__init__(in_channels, first_conv, nn.Sequential(*body), head, mean, std)
        self.variant, self.method = variant, method
        init_weights(self)

    @staticmethod
    def _projection(
        variant: str, shortcut: str, in_channels: int, out_channels: int, h: float
    ) -> ProjectionBlock:
        if variant == "preact":
            pre = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU())
            branch = residual_function("preact", in_channels, out_channels, stride=2)[2:]  # reuse pre
            return ProjectionBlock(branch, _shortcut(shortcut, in_channels, out_channels, 2), h, pre)
        branch = residual_function(variant, in_channels, out_channels, stride=2)
        return ProjectionBlock(branch, _shortcut(shortcut, in_channels, out_channels, 2), h)


def cifar_blocks_per_stage(depth: int) -> int:
    """k for CIFAR ResNet-n, n = 6k + 2."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6k + 2 with k >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}"
        )
    return (depth - 2) // 6


@register_model("resnet")
def resnet(
    depth: int = 20,
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    step_size: float = 1.0,
    method: str = "euler",
    variant: str = "euler",
    shortcut: str = "A",
) -> ResNet:
    """CIFAR ResNet-``depth`` (16/32/64 channels, (depth − 2)/6 blocks per stage) with step size h."""
    return ResNet(
        cifar_blocks_per_stage(depth),
        (16, 32, 64),
        in_channels=in_channels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        step_size=step_size,
        method=method,
        variant=variant,
        shortcut=shortcut,
    )


def _register_depth(depth: int) -> None:
    factory = functools.partial(resnet, depth)
    factory.__doc__ = (
        f"CIFAR ResNet-{depth}: {cifar_blocks_per_stage(depth)} Euler blocks per stage, step size h."
    )
    register_model(f"resnet{depth}")(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_depth(_depth)


@register_model("preact_resnet18")
def preact_resnet18(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    step_size: float = 1.0,
    method: str = "euler",
) -> ResNet:
    """PreAct-ResNet18: 64/128/256/512 channels, 2 full-pre-activation blocks each, 1×1 projections."""
    return ResNet(
        2,
        (64, 128, 256, 512),
        in_channels=in_channels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        step_size=step_size,
        method=method,
        variant="preact",
        shortcut="B",
    )


@register_model("mnist_resnet_small")
def mnist_resnet_small(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    step_size: float = 1.0,
    method: str = "euler",
    width: int = 32,
    blocks_per_stage: int = 2,
) -> ResNet:
    """CPU-sized MNIST ResNet: stride-2 stem to 14×14, stages of ``width`` and 2·``width`` channels."""
    return ResNet(
        blocks_per_stage,
        (width, 2 * width),
        in_channels=in_channels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        step_size=step_size,
        method=method,
        stem_stride=2,
    )
