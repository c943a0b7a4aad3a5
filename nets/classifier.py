"""The shape every architecture here shares: normalize → first conv → body → head, with the YOPO split."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from nets.normalization import Normalize


class ImageClassifier(nn.Module):
    """logits = head(body(first_layer(x))) for images x in [0, 1] of shape [B, in_channels, H, W].

    ``first_layer`` is the input normalization followed by the first convolution: the layer f_0 that YOPO
    (``attacks.yopo``) attacks separately, through ``forward_from_first_layer(z) = head(body(z))``.
    """

    def __init__(
        self,
        in_channels: int,
        first_conv: nn.Module,
        body: nn.Module,
        head: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.first_layer = nn.Sequential(Normalize(in_channels, mean, std), first_conv)
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects images [B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"images must be floating point in [0, 1], got {x.dtype}")
        return self.forward_from_first_layer(self.first_layer(x))

    def forward_from_first_layer(self, z: Tensor) -> Tensor:
        return self.head(self.body(z))


def classifier_head(channels: int, num_classes: int, norm: nn.Module | None = None) -> nn.Sequential:
    """[norm →] ReLU → global average pool → linear."""
    layers: list[nn.Module] = [norm] if norm is not None else []
    layers += [
        nn.ReLU(inplace=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    ]
    return nn.Sequential(*layers)


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, unit/zero norm affine, PyTorch-default linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
