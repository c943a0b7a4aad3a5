"""DI2-FGSM / M-DI2-FGSM (Xie et al., 2019, "Improving transferability of adversarial examples with input
diversity").

Each iteration differentiates the loss through a random input transform ``T``: with probability ``p`` the
image is nearest-neighbour resized to ``rnd x rnd`` with ``rnd ~ U{H, ..., R-1}``,
``R = max(floor(H * resize_rate), H + 1)`` (paper: 299 -> [299, 330)), and zero-padded at a random offset
into an ``R x R`` canvas. The update is
``g <- decay * g + grad / mean|grad|`` (momentum, M-DI2-FGSM when ``decay > 0``) and
``x <- Proj_{B_inf(x0, eps) cap [0,1]}(x + alpha * sign(g))``.

Unlike the reference TensorFlow code and torchattacks' ``DIFGSM`` (one transform for the whole batch), every
sample draws its own ``rnd``, offset and coin flip here. ``variant="batch"`` reproduces torchattacks' variant
(one bilinear shrink-and-pad for the whole batch, ``resize_rate < 1`` shrinks) for cross-checks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Attack, AttackResult, require_count, require_nonnegative
from .gradients import GradientMonitor, objective_and_gradient
from .pgd import linf_box

__all__ = ["DI2FGSM", "InputDiversity"]

PAPER_RESIZE_RATE = 330 / 299


def _uniform_int(low: Tensor, high_exclusive: Tensor, generator: torch.Generator) -> Tensor:
    """Per-element uniform integers in ``[low, high_exclusive)`` (requires ``high_exclusive > low``)."""
    u = torch.rand(low.shape, generator=generator, device=low.device, dtype=torch.float64)
    return low + torch.floor(u * (high_exclusive - low).double()).long().clamp_max_(high_exclusive - low - 1)


class InputDiversity:
    """The random resize-and-pad transform ``T`` of DI2-FGSM, batched with per-sample randomness.

    ``output_size="canvas"`` (the paper) returns ``R x R`` images, so the model must accept larger inputs
    (e.g. global pooling); samples that skip the transform are resized to the full canvas. A model whose head
    expects a fixed size sees the canvas off-distribution and the attack gets much weaker (bench/
    crosscheck_attacks.py measures this on an MNIST CNN); use ``"input"`` for such models.
    ``output_size="input"`` resizes the canvas back to ``H x W`` (for fixed-size models); samples that skip
    the transform are then returned unchanged.
    """

    def __init__(
        self,
        resize_rate: float = PAPER_RESIZE_RATE,
        probability: float = 0.5,
        output_size: Literal["canvas", "input"] = "canvas",
        variant: Literal["paper", "batch"] = "paper",
    ) -> None:
        self.resize_rate = require_nonnegative("resize_rate", resize_rate)
        self.probability = require_nonnegative("probability", probability)
        if self.probability > 1:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        if output_size not in ("canvas", "input"):
            raise ValueError(f"output_size must be 'canvas' or 'input', got {output_size!r}")
        if variant not in ("paper", "batch"):
            raise ValueError(f"variant must be 'paper' or 'batch', got {variant!r}")
        if variant == "paper" and self.resize_rate <= 1:
            raise ValueError("the paper variant enlarges: resize_rate must be > 1")
        self.output_size = output_size
        self.variant = variant

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"input diversity needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
        if self.variant == "batch":
            return self._batch_variant(x, generator)
        return self._paper_variant(x, generator)

    def _paper_variant(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = x.shape
        # at least one pixel larger, so small images (where floor(H * rate) == H) are still transformed
        canvas_h = max(int(height * self.resize_rate), height + 1)
        canvas_w = max(int(width * self.resize_rate), width + 1)
        device = x.device
        apply = torch.rand(n, generator=generator, device=device) < self.probability
        # one scale draw per sample, shared by both axes so the aspect ratio is kept
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        size_h = height + torch.floor(u * (canvas_h - height)).long().clamp_max_(canvas_h - height - 1)
        size_w = width + torch.floor(u * (canvas_w - width)).long().clamp_max_(canvas_w - width - 1)
        top = _uniform_int(torch.zeros_like(size_h), canvas_h - size_h, generator)
        left = _uniform_int(torch.zeros_like(size_w), canvas_w - size_w, generator)
        if self.output_size == "canvas":
            # samples that skip the transform fill the whole canvas (a pure resize)
            size_h = torch.where(apply, size_h, canvas_h)
            size_w = torch.where(apply, size_w, canvas_w)
            top = torch.where(apply, top, 0)
            left = torch.where(apply, left, 0)
            rows, row_ok = self._axis_map(canvas_h, canvas_h, height, size_h, top, device)
            cols, col_ok = self._axis_map(canvas_w, canvas_w, width, size_w, left, device)
        else:
            rows, row_ok = self._axis_map(height, canvas_h, height, size_h, top, device)
            cols, col_ok = self._axis_map(width, canvas_w, width, size_w, left, device)
            identity_r = torch.arange(height, device=device).expand(n, height)
            identity_c = torch.arange(width, device=device).expand(n, width)
            rows = torch.where(apply[:, None], rows, identity_r)
            cols = torch.where(apply[:, None], cols, identity_c)
            row_ok = row_ok | ~apply[:, None]
            col_ok = col_ok | ~apply[:, None]
        return self._gather(x, rows, row_ok, cols, col_ok)

    @staticmethod
    def _axis_map(
        out_len: int, canvas_len: int, in_len: int, size: Tensor, offset: Tensor, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Source index (nearest neighbour, ``floor(i * in/size)``) and validity of each output position."""
        out_index = torch.arange(out_len, device=device)
        canvas_index = (out_index * canvas_len) // out_len  # identity when out_len == canvas_len
        local = canvas_index[None, :] - offset[:, None]
        valid = (local >= 0) & (local < size[:, None])
        source = (local.clamp(min=0) * in_len) // size[:, None]
        return source.clamp_(max=in_len - 1), valid

    @staticmethod
    def _gather(x: Tensor, rows: Tensor, row_ok: Tensor, cols: Tensor, col_ok: Tensor) -> Tensor:
        n, channels, _, width = x.shape
        out_h, out_w = rows.shape[1], cols.shape[1]
        picked_rows = x.gather(2, rows[:, None, :, None].expand(n, channels, out_h, width))
        picked = picked_rows.gather(3, cols[:, None, None, :].expand(n, channels, out_h, out_w))
        mask = row_ok[:, None, :, None] & col_ok[:, None, None, :]
        return picked * mask.to(x.dtype)

    def _batch_variant(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """torchattacks' DIFGSM transform: one bilinear resize and pad for the whole batch."""
        if bool(torch.rand(1, generator=generator, device=x.device) >= self.probability):
            return x
        size = x.shape[-1]
        resized = int(size * self.resize_rate)
        low, high = (resized, size) if self.resize_rate < 1 else (size, resized)
        if high <= low:
            raise ValueError(f"resize_rate={self.resize_rate} leaves no size range for a {size}-pixel image")
        rnd = int(torch.randint(low, high, (1,), generator=generator, device=x.device))
        rescaled = F.interpolate(x, size=[rnd, rnd], mode="bilinear", align_corners=False)
        remainder = high - rnd
        top = int(torch.randint(0, remainder, (1,), generator=generator, device=x.device))
        left = int(torch.randint(0, remainder, (1,), generator=generator, device=x.device))
        return F.pad(rescaled, [left, remainder - left, top, remainder - top], value=0.0)


class DI2FGSM(Attack):
    """Iterative FGSM through random input diversity, optionally with momentum (M-DI2-FGSM).

    ``alpha`` defaults to ``eps / steps``; ``decay = 0`` gives DI2-FGSM, ``decay > 0`` M-DI2-FGSM (the paper
    uses 1.0). No random start by default, as in the paper.
    """

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        decay: float = 0.0,
        diversity_prob: float = 0.5,
        resize_rate: float = PAPER_RESIZE_RATE,
        output_size: Literal["canvas", "input"] = "canvas",
        variant: Literal["paper", "batch"] = "paper",
        random_start: bool = False,
        *,
        targeted: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__(targeted=targeted, seed=seed)
        self.eps = require_nonnegative("eps", eps)
        self.steps = require_count("steps", steps)
        self.alpha = self.eps / self.steps if alpha is None else require_nonnegative("alpha", alpha)
        self.decay = require_nonnegative("decay", decay)
        self.random_start = bool(random_start)
        self.diversity = InputDiversity(resize_rate, diversity_prob, output_size, variant)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        generator = self.generator(x.device)
        lower, upper = linf_box(x, self.eps)
        x_adv = x.clone()
        if self.random_start and self.eps > 0:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = torch.clamp(x + (2.0 * noise - 1.0) * self.eps, min=lower, max=upper)
        momentum = torch.zeros_like(x)
        monitor = GradientMonitor()
        reduce_dims = tuple(range(1, x.dim()))
        for step in range(self.steps):
            try:
                objective, gradient, _ = objective_and_gradient(
                    model, x_adv, y, targeted=self.targeted,
                    transform=lambda z: self.diversity(z, generator), check_labels=step == 0,
                )
            except RuntimeError as error:
                mismatch = _dtype_mismatch(model, x)
                if mismatch:
                    raise ValueError(f"DI2FGSM: {mismatch}") from error
                if step or self.diversity.output_size != "canvas":
                    raise
                raise ValueError(
                    f"DI2FGSM: the model failed on the enlarged canvas of the paper's input diversity "
                    f"({self.diversity.resize_rate:g} × the input size): {error}. A model with a fixed-size "
                    f"head needs output_size='input' (the canvas resized back to the input size)") from error
            gradient = monitor.record(objective, gradient)
            scale = gradient.abs().mean(dim=reduce_dims, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            momentum = self.decay * momentum + gradient / scale
            x_adv = torch.clamp(x_adv + self.alpha * momentum.sign(), min=lower, max=upper)
        return AttackResult(x_adv, monitor.summary())

    def _config(self) -> dict[str, object]:
        d = self.diversity
        return {
            "eps": self.eps, "alpha": self.alpha, "steps": self.steps, "decay": self.decay,
            "diversity_prob": d.probability, "resize_rate": d.resize_rate, "output_size": d.output_size,
            "variant": d.variant, "random_start": self.random_start, **super()._config(),
        }


def _dtype_mismatch(model: nn.Module, x: Tensor) -> str:
    """A sentence naming both dtypes when ``x``'s is none of ``model``'s floating parameters'; else ''."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes or x.dtype in dtypes:
        return ""
    names = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
    have = str(x.dtype).replace("torch.", "")
    return (f"the input is {have} but the model's parameters are {names}: convert one to the other "
            f"(e.g. x.to({next(iter(sorted(dtypes, key=str)))}) or model.to({x.dtype}))")
