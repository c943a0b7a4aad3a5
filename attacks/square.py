"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based random search, L-inf / L2.

Minimizes the margin ``m(x') = z_y - max_{i != y} z_i`` (untargeted; ``z_t - max_{i != t} z_i`` with the sign
flipped for a target ``t``) by random search over square-shaped updates. Per sample and iteration ``i``:
a window of side ``s_i = round(sqrt(p_i * h * w))`` at a uniformly random position gets a random update;
the candidate is kept iff the margin decreases (or the sample becomes misclassified). ``p_i`` follows the
paper's schedule: ``p_init`` halved after queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 (with
``rescale_schedule`` the breakpoints scale to a budget other than 10 000).

* L-inf: start at vertical stripes ``x + eps * (+-1)`` per column and channel; an update sets the window to
  ``x + eps * (+-1)`` per channel (a vertex of the ball).
* L2: start from a grid of ``h // 5``-sized "pseudo-Gaussian" blocks rescaled to ``||delta||_2 = eps``; an
  update moves mass from a second window into the first, keeping ``||delta||_2 = eps`` before clipping.

Queries are counted per sample, the initial point included; a sample stops once fooled and never exceeds
``max_queries``. Defaults are AutoAttack's (``p_init = 0.8``, 5000 queries, the margin loss). Windows,
signs and positions are drawn per sample (the paper's algorithm; AutoAttack's implementation shares one
window position across the batch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import (
    Attack,
    AttackResult,
    check_finite_logits,
    check_labels_in_range,
    require_count,
    require_nonnegative,
    require_norm,
)

__all__ = ["Square", "square_p_schedule"]

_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p_schedule(
    iteration: int, p_init: float, max_queries: int = 10_000, rescale_schedule: bool = False
) -> float:
    """Fraction of pixels changed at ``iteration``: ``p_init / 2^j`` after the j-th breakpoint passed."""
    if rescale_schedule:
        iteration = int(iteration / max_queries * 10_000)
    halvings = sum(iteration > b for b in _BREAKPOINTS)
    return p_init / 2**halvings


def _eta_rectangle(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Nested centred rectangles: ``sum_{k >= d} 1/(k+1)^2`` at Chebyshev distance ``d`` from the centre,
    normalized to unit L2 norm (the paper's ``eta``)."""
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    distance = torch.maximum((r - rows // 2).abs()[:, None], (c - cols // 2).abs()[None, :])
    levels = max(rows // 2 + 1, cols // 2 + 1)
    weights = 1.0 / torch.arange(1, levels + 1, device=device, dtype=dtype) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} weights[k]
    block = tail[distance.clamp(max=levels - 1)]
    return block / block.norm()


def _eta(s: int, transpose: bool, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The L2 update pattern of side ``s``: a positive and a negative half, unit norm."""
    top = (
        _eta_rectangle(s // 2, s, device, dtype)
        if s // 2 > 0
        else torch.zeros(0, s, device=device, dtype=dtype)
    )
    bottom = -_eta_rectangle(s - s // 2, s, device, dtype)
    block = torch.cat([top, bottom])
    block = block / block.norm()
    return block.T if transpose else block


def _window_index(
    n: int, s: int, h: int, w: int, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample window indices: batch ``[n,1,1]``, rows ``[n,s,1]`` and columns ``[n,1,s]``."""
    top = torch.randint(0, h - s + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, w - s + 1, (n,), generator=generator, device=device)
    offsets = torch.arange(s, device=device)
    batch = torch.arange(n, device=device).view(n, 1, 1)
    return batch, (top[:, None] + offsets).view(n, s, 1), (left[:, None] + offsets).view(n, 1, s)


def _window_mask(
    n: int, s: int, h: int, w: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """The windows of :func:`_window_index` (the same random draws) as a boolean mask ``[n, 1, h, w]``."""
    top = torch.randint(0, h - s + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, w - s + 1, (n,), generator=generator, device=device)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + s)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + s)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _read(tensor: Tensor, index: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """The ``[n, c, s, s]`` windows of a ``[n, c, h, w]`` tensor."""
    batch, rows, cols = index
    return tensor[batch, :, rows, cols].permute(0, 3, 1, 2)


def _write(tensor: Tensor, index: tuple[Tensor, Tensor, Tensor], value: Tensor | float) -> None:
    batch, rows, cols = index
    tensor[batch, :, rows, cols] = value.permute(0, 2, 3, 1) if isinstance(value, Tensor) else value


def _random_sign(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2.0 - 1.0


def _l2_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v.flatten(1), dim=1).view(-1, 1, 1, 1)


class Square(Attack):
    """Square Attack; ``attack(model, x, y)`` for images ``x`` of shape ``(N, C, H, W)`` in [0, 1].

    Result ``stats``: ``queries`` per sample (initial point included, ``<= max_queries``), ``fooled`` per
    sample, ``final_margin`` (the margin at the returned point; <= 0 means fooled).
    """

    def __init__(
        self,
        eps: float,
        max_queries: int = 5000,
        norm: str = "linf",
        p_init: float = 0.8,
        loss: str = "margin",
        rescale_schedule: bool = False,
        *,
        targeted: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__(targeted=targeted, seed=seed)
        self.eps = require_nonnegative("eps", eps)
        self.max_queries = require_count("max_queries", max_queries)
        require_norm(norm)
        self.norm = norm
        self.p_init = require_nonnegative("p_init", p_init)
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        if loss not in ("margin", "ce"):
            raise ValueError(f"loss must be 'margin' or 'ce', got {loss!r}")
        self.loss = loss
        self.rescale_schedule = bool(rescale_schedule)

    # -- scores ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _margin_and_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(margin, loss)`` to minimize; ``margin <= 0`` means the sample is fooled."""
        logits = model(x)
        check_finite_logits(logits)
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], -torch.inf).amax(dim=1)
        margin = (others - z_y) if self.targeted else (z_y - others)
        if self.loss == "margin":
            return margin, margin
        cross_entropy = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        return margin, (cross_entropy if self.targeted else -cross_entropy)

    # -- the search -----------------------------------------------------------------------------------------
    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        if x.dim() != 4:
            raise ValueError(f"Square needs images of shape (N, C, H, W), got {tuple(x.shape)}")
        n, c, h, w = x.shape
        with torch.no_grad():
            check_labels_in_range(model(x[:1]), y[:1])
        generator = self.generator(x.device)
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        if self.eps == 0:
            margin, _ = self._margin_and_loss(model, x, y)
            queries += 1
            return AttackResult(x.clone(), self._stats(queries, margin))
        x_best = self._initial_point(x, generator)
        margin, loss = self._margin_and_loss(model, x_best, y)
        queries += 1
        for iteration in range(self.max_queries - 1):
            todo = (margin > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            p = square_p_schedule(iteration, self.p_init, self.max_queries, self.rescale_schedule)
            x_curr, best_curr = x[todo], x_best[todo]
            if self.norm == "linf":
                s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
                candidate = self._linf_candidate(x_curr, best_curr, s, generator)
            else:
                s = max(int(round(math.sqrt(p * h * w))), 3)
                s = min(s + 1 if s % 2 == 0 else s, h, w)
                candidate = self._l2_candidate(x_curr, best_curr, s, generator)
            new_margin, new_loss = self._margin_and_loss(model, candidate, y[todo])
            queries[todo] += 1
            improved = (new_loss < loss[todo]) | (new_margin <= 0)
            keep = todo[improved]
            x_best[keep] = candidate[improved]
            margin[keep] = new_margin[improved]
            loss[keep] = torch.minimum(new_loss[improved], loss[keep])
            self._progress((iteration + 2) / self.max_queries)
        return AttackResult(x_best, self._stats(queries, margin))

    @staticmethod
    def _stats(queries: Tensor, margin: Tensor) -> dict[str, Tensor]:
        return {"queries": queries.cpu(), "fooled": (margin <= 0).cpu(), "final_margin": margin.cpu()}

    def _initial_point(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":
            stripes = _random_sign((n, c, 1, w), generator, x.device, x.dtype)
            return (x + self.eps * stripes).clamp(0.0, 1.0)
        delta = torch.zeros_like(x)
        s = max(h // 5, 1)
        start = (h - s * 5) // 2 if h >= 5 else 0
        for top in range(start, h - s + 1, s):
            for left in range(start, w - s + 1, s):
                transpose = bool(torch.rand((), generator=generator, device=x.device) > 0.5)
                pattern = _eta(s, transpose, x.device, x.dtype).view(1, 1, s, s)
                delta[:, :, top : top + s, left : left + s] += pattern * _random_sign(
                    (n, c, 1, 1), generator, x.device, x.dtype
                )
        return (x + self.eps * delta / (_l2_norm(delta) + 1e-12)).clamp(0.0, 1.0)

    def _linf_candidate(self, x: Tensor, best: Tensor, s: int, generator: torch.Generator) -> Tensor:
        n, c = x.shape[:2]
        # dense ops with a window mask: on small images much cheaper than gathering and scattering windows
        window = _window_mask(n, s, x.shape[2], x.shape[3], generator, x.device)
        sign = _random_sign((n, c, 1, 1), generator, x.device, x.dtype)
        return torch.where(window, (x + self.eps * sign).clamp(0.0, 1.0), best)

    def _l2_candidate(self, x: Tensor, best: Tensor, s: int, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        delta = best - x
        first = _window_index(n, s, h, w, generator, x.device)
        second = _window_index(n, s, h, w, generator, x.device)
        window = _read(delta, first)
        window_norm = torch.linalg.vector_norm(window, dim=(-2, -1), keepdim=True)
        mask = torch.zeros(n, 1, h, w, device=x.device, dtype=x.dtype)
        _write(mask, first, torch.ones(n, 1, s, s, device=x.device, dtype=x.dtype))
        _write(mask, second, torch.ones(n, 1, s, s, device=x.device, dtype=x.dtype))
        windows_norm = torch.linalg.vector_norm(delta * mask, dim=(-2, -1), keepdim=True)  # [n, c, 1, 1]
        image_norm = _l2_norm(delta)
        transpose = bool(torch.rand((), generator=generator, device=x.device) > 0.5)
        update = _eta(s, transpose, x.device, x.dtype).view(1, 1, s, s) * _random_sign(
            (n, c, 1, 1), generator, x.device, x.dtype
        )
        update = update + window / (window_norm + 1e-12)
        budget = ((self.eps**2 - image_norm**2).clamp(min=0.0) / c + windows_norm**2).sqrt()
        update = update / (torch.linalg.vector_norm(update, dim=(-2, -1), keepdim=True) + 1e-12) * budget
        delta = delta.clone()
        _write(delta, second, 0.0)
        _write(delta, first, update)
        return (x + self.eps * delta / (_l2_norm(delta) + 1e-12)).clamp(0.0, 1.0)

    def _config(self) -> dict[str, object]:
        return {
            "eps": self.eps,
            "max_queries": self.max_queries,
            "norm": self.norm,
            "p_init": self.p_init,
            "loss": self.loss,
            **super()._config(),
        }
