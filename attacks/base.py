"""The attack contract shared by every attack in this package.

An attack is configured once and called on a batch::

    attack = PGD(eps=0.3, alpha=0.01, steps=40)
    x_adv = attack(model, x, y)              # the adversarial batch
    result = attack.run(model, x, y)         # AttackResult(x_adv, stats)

* ``x`` is a float tensor of shape ``(N, ...)`` with values in ``[0, 1]`` (normalization lives inside the
  model); ``y`` holds ``N`` integer labels -- the true labels (untargeted, the default) or the target labels
  (``targeted=True``).
* ``model(x)`` returns logits of shape ``(N, num_classes)``.
* The model is put in eval mode for the attack and every submodule's mode is restored afterwards.
* Randomness comes from a ``torch.Generator`` per device, seeded with ``seed`` at first use, so the same
  sequence of calls gives the same results; :meth:`Attack.reseed` restarts the stream.
* :meth:`Attack.run` returns an :class:`AttackResult`: the adversarial batch and the call's diagnostics (loss
  curves, gradient health, queries); calling the attack returns the batch alone.
* :class:`WrappedAttack` runs another attack in a changed setting (another model, another solver) and forwards
  its ``eps``, seed, reseeding, ``targeted``, ``min_classes`` and statistics.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Attack", "AttackResult", "WrappedAttack", "NonFiniteLogitsError", "check_finite_logits",
           "eval_mode", "check_inputs", "check_labels_in_range", "model_device", "perturbation_size",
           "require_nonnegative"]


class NonFiniteLogitsError(ValueError):
    """The model returned NaN or inf logits: no attack result on such a model means anything."""


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode; restore each one's own ``training`` flag on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def perturbation_size(delta: Tensor, norm: str) -> Tensor:
    """Per-sample ``||delta||_inf`` (``norm="linf"``) or ``||delta||_2`` (``"l2"``) over all but dim 0."""
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else torch.linalg.vector_norm(flat, dim=1)


NORMS = ("linf", "l2")


def require_norm(norm: str) -> str:
    """Validate a perturbation norm name: ``"linf"`` or ``"l2"``."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def require_nonnegative(name: str, value: float) -> float:
    """Validate a finite, non-negative real hyper-parameter (e.g. ``eps``) and return it as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def require_positive(name: str, value: float) -> float:
    value = require_nonnegative(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def require_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_inputs(x: Tensor, y: Tensor) -> None:
    """Raise a clear error unless ``x`` is a finite float batch in ``[0, 1]`` and ``y`` matches it."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("x and y must be torch.Tensor")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x needs a batch dimension and a feature dimension, got {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}")
    if x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"x must lie in [0, 1] (normalize inside the model), got [{lo:.4g}, {hi:.4g}]")
    if bool((y < 0).any()):
        raise ValueError("y contains negative labels")


def check_labels_in_range(logits: Tensor, y: Tensor) -> None:
    """Called once on the first forward pass: the model must return ``(N, C)`` logits and ``y < C``."""
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"model must return logits of shape (N, num_classes), got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"model returned {logits.shape[1]} logit per sample: the attacks need (N, C) logits "
                         f"of C >= 2 classes (for a binary classifier return two logits, e.g. [0, z])")
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise ValueError(f"label {int(y.max())} out of range for a model with {logits.shape[1]} classes")


def check_finite_logits(logits: Tensor) -> None:
    """Raise :class:`NonFiniteLogitsError` naming how many samples got NaN/inf logits."""
    finite = torch.isfinite(logits).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteLogitsError(
            f"model returned non-finite logits for {bad} of {logits.shape[0]} samples; fix the model (or its "
            "solver settings) before evaluating robustness")


@dataclass(frozen=True)
class AttackResult:
    """One call of an attack: ``x_adv`` (same shape and dtype as ``x``) and that call's diagnostics ``stats``
    (e.g. ``objective_curve``, ``zero_gradient_fraction``, per-sample ``queries`` and ``fooled``)."""

    x_adv: Tensor
    stats: Mapping[str, Any] = field(default_factory=dict)


class Attack:
    """Base class: validation, eval-mode handling and seeded generators.

    Subclasses implement :meth:`_attack` on validated inputs (model already in eval mode) and return
    ``x_adv`` of the same shape and dtype as ``x``, or an :class:`AttackResult` carrying their diagnostics.
    """

    targeted: bool = False
    minimizes: str | None = None
    """``None`` for attacks bounded by ``eps``; the norm (``"l2"``) for minimization attacks such as the
    Boundary Attack, whose result is thresholded by the evaluation at each ``eps``."""
    on_progress: Callable[[float], None] | None = None
    """Set it to follow a long call: Square and the Boundary Attack call it per query, APGD per restart and
    target, with the fraction of their budget spent on the current batch (0 to 1). Never changes results."""

    @property
    def min_classes(self) -> int:
        """The fewest classes the attack's loss is defined for (the suite skips it below, saying so)."""
        return 2

    def __init__(self, *, targeted: bool = False, seed: int | None = 0) -> None:
        if not isinstance(targeted, bool):
            raise TypeError("targeted must be a bool")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError("seed must be an int or None")
        self.targeted = targeted
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    # -- randomness -----------------------------------------------------------------------------------------
    def reseed(self, seed: int | None = None) -> None:
        """Restart the random streams (from ``seed`` if given, else from the constructor's seed)."""
        if seed is not None:
            self.seed = seed
        self._generators.clear()

    def generator(self, device: torch.device) -> torch.Generator:
        device = torch.device(device)
        if device not in self._generators:
            generator = torch.Generator(device=device)
            seed = self.seed
            if seed is None:  # follow the global RNG, so torch.manual_seed still makes runs reproducible
                seed = int(torch.randint(0, 2**62, (1,)).item())
            generator.manual_seed(seed)
            self._generators[device] = generator
        return self._generators[device]

    # -- the contract ---------------------------------------------------------------------------------------
    def run(self, model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> AttackResult:
        """Attack the batch ``(x, y)``: the adversarial batch and this call's diagnostics."""
        if not callable(model):
            raise TypeError("model must be callable (an nn.Module returning logits)")
        check_inputs(x, y)
        y = y.long()
        if x.shape[0] == 0:
            return AttackResult(x.clone())
        context = eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
        with context:
            out = self._attack(model, x.detach(), y.detach(), **kwargs)
        if isinstance(out, AttackResult):
            return AttackResult(out.x_adv.detach(), out.stats)
        return AttackResult(out.detach())

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> Tensor:
        """``run(model, x, y).x_adv``: the adversarial batch alone."""
        return self.run(model, x, y, **kwargs).x_adv

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> Tensor | AttackResult:
        raise NotImplementedError

    def _progress(self, fraction: float) -> None:
        """Report the fraction of the budget spent on this batch to :attr:`on_progress`, if set."""
        if self.on_progress is not None:
            self.on_progress(fraction)

    def is_adversarial(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-sample success: prediction differs from ``y`` (untargeted) or equals the target ``y``."""
        prediction = logits.argmax(dim=1)
        return prediction == y if self.targeted else prediction != y

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({fields})"

    def _config(self) -> dict[str, Any]:
        return {"targeted": self.targeted, "seed": self.seed}


class WrappedAttack(Attack):
    """Runs ``inner`` in a changed setting: subclasses override :meth:`_attack` (or :meth:`_around`).

    Everything that makes the wrapped attack what it is comes from ``inner``: ``eps``, ``targeted``, seed and
    reseeding (the suite's per-batch :meth:`reseed` reaches the inner attack), ``minimizes``, ``min_classes``,
    per-query progress and the statistics of each call. The default :meth:`_attack` runs ``inner`` on
    ``model`` inside :meth:`_around`.
    """

    def __init__(self, inner: Attack) -> None:
        if not isinstance(inner, Attack):
            raise TypeError(f"inner must be an Attack, got {type(inner).__name__}")
        super().__init__(targeted=inner.targeted, seed=inner.seed)
        self.inner = inner
        self.eps = getattr(inner, "eps", None)
        self.minimizes = inner.minimizes

    @property
    def min_classes(self) -> int:
        return self.inner.min_classes

    def reseed(self, seed: int | None = None) -> None:
        super().reseed(seed)
        self.inner.reseed(seed)

    @property
    def on_progress(self) -> Callable[[float], None] | None:  # type: ignore[override]
        return self.inner.on_progress

    @on_progress.setter
    def on_progress(self, value: Callable[[float], None] | None) -> None:
        self.inner.on_progress = value

    def _around(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """The setting ``inner`` runs in (default: none)."""
        return contextlib.nullcontext()

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> AttackResult:
        with self._around(model):
            return self.inner.run(model, x, y, **kwargs)

    def _config(self) -> dict[str, Any]:
        return {"inner": repr(self.inner)}
