"""ODE-Net (Chen et al. 2018): stem → dy/dt = f(t, y) on [0, t1] solved by ``stability`` → head.

The ODE block integrates with ``stability.solve`` (adaptive Dormand–Prince 5(4) by default, or any
``stability`` method; ``step_size`` selects fixed steps). In the default mode a batch is one ODE state: the
solver takes one step-size sequence for the whole batch, controlled by the RMS error norm over all samples, so
a sample's output depends (within the tolerance) on its batch-mates; ``per_sample=True`` gives every sample
its own step control instead. ``gradient`` is "backprop" (through the solver's steps; step-size decisions
carry no gradient), "checkpoint" or "adjoint" (``stability``'s variants). All settings form one validated
``stability.SolverOptions`` value (``block.options``), changed only through ``SolverOptions.replace``.

f uses GroupNorm, never batch statistics. The ODE block counts its work and reports it through
``pop_solver_stats()`` (the ``nets.training`` protocol), accumulated since the previous pop: ``nfe`` (batched
evaluations of f in forward solves), ``sample_nfe`` (Σ over samples of the evaluations each went through),
``accepted``/``rejected`` steps (summed over samples in per-sample mode), ``solves``, ``samples``, and in
adjoint mode ``backward_nfe`` (evaluations of the adjoint system in the backward passes that ran).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import stability
from nets.classifier import ImageClassifier, check_positive_int, init_weights
from nets.registry import register_model
from stability import SolverOptions


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ConcatTimeConv2d(nn.Module):
    """3×3 convolution of [y, t·1] (t appended as a constant channel) — Chen et al.'s ``ConcatConv2d``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=1)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        t = t.to(y.dtype)
        time = (t.view(-1, 1, 1, 1) if t.dim() == 1 else t).expand(y.shape[0], 1, *y.shape[2:])
        return self.conv(torch.cat([y, time], dim=1))


class ODEFunc(nn.Module):
    """f(t, y) = GN(conv_L(ReLU(GN(… conv_1(ReLU(GN(y))) …)))): ``conv_layers`` 3×3 convolutions of width
    ``channels`` in pre-activation order, closed by a GroupNorm. Autonomous unless ``time_dependent``."""

    def __init__(self, channels: int, conv_layers: int = 2, time_dependent: bool = False) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("conv_layers", conv_layers)
        self.time_dependent = bool(time_dependent)
        self.norms = nn.ModuleList(group_norm(channels) for _ in range(conv_layers + 1))
        if self.time_dependent:
            self.convs = nn.ModuleList(ConcatTimeConv2d(channels, channels) for _ in range(conv_layers))
        else:
            self.convs = nn.ModuleList(
                nn.Conv2d(channels, channels, 3, padding=1) for _ in range(conv_layers)
            )
        self.relu = nn.ReLU()

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        out = y
        for norm, conv in zip(self.norms, self.convs):
            out = self.relu(norm(out))
            out = conv(t, out) if self.time_dependent else conv(out)
        return self.norms[-1](out)


# ODE-Net defaults: dopri5 at rtol = atol = 1e-3, at most 10,000 steps (stability's defaults are tighter).
ODENET_SOLVER = stability.SolverOptions(rtol=1e-3, atol=1e-3, max_steps=10_000)


def solver_options(options: stability.SolverOptions | None = None, **settings: Any) -> SolverOptions:
    """``options`` (default ``ODENET_SOLVER``) with ``settings`` replaced; validated once, here.

    ``settings`` are ``stability.SolverOptions`` fields (None: keep), as the ODE-Net constructors name them
    (method, rtol, atol, step_size, max_steps, gradient, per_sample), plus ``solver_options``: a mapping of
    any other field (e.g. ``{"adjoint_norm": "seminorm"}``)."""
    extra = settings.pop("solver_options", None) or {}
    changes = {**{name: value for name, value in settings.items() if value is not None}, **extra}
    base = ODENET_SOLVER if options is None else options
    return base.replace(**changes) if changes else base


class ODEBlock(nn.Module):
    """y ↦ y(t1) for dy/dt = func(t, y), y(0) = y, solved by ``stability.solve`` with ``self.options``.

    ``options`` is one validated ``stability.SolverOptions`` (default ``ODENET_SOLVER``); the keywords of
    :func:`solver_options` adjust it. Read the settings as ``block.options`` (or ``block.method``,
    ``block.rtol``, …); change them with :meth:`use_solver` or, temporarily, :meth:`solver_override` — both
    go through ``SolverOptions.replace`` (``dataclasses.replace``), so every setting is validated.
    """

    GRADIENTS = ("backprop", "checkpoint", "adjoint")
    STAT_KEYS = ("nfe", "sample_nfe", "accepted", "rejected", "solves", "samples")

    def __init__(
        self,
        func: nn.Module,
        t1: float = 1.0,
        options: stability.SolverOptions | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        t1 = float(t1)
        if not (math.isfinite(t1) and t1 > 0):
            raise ValueError(f"t1 must be finite and > 0, got {t1}")
        self.func, self.t1 = func, t1
        self._options = solver_options(options, **settings)
        self._reset_stats()

    @property
    def options(self) -> stability.SolverOptions:
        """The solver settings (a frozen value: change them with :meth:`use_solver`)."""
        return self._options

    def use_solver(
        self, options: stability.SolverOptions | None = None, **changes: Any
    ) -> stability.SolverOptions:
        """Solve with ``options`` (or the current options with ``changes``, via ``SolverOptions.replace``)
        from now on; returns the previous options, so a caller can restore them."""
        previous = self._options
        if options is not None and not isinstance(options, stability.SolverOptions):
            raise TypeError(f"options must be a stability.SolverOptions, got {type(options).__name__}")
        self._options = (options or previous).replace(**changes) if changes else (options or previous)
        return previous

    @contextlib.contextmanager
    def solver_override(
        self, options: stability.SolverOptions | None = None, **changes: Any
    ) -> Iterator[None]:
        """Temporarily solve with other settings (surrogate solvers, evaluation); restored on exit."""
        previous = self.use_solver(options, **changes)
        try:
            yield
        finally:
            self._options = previous

    method = property(lambda self: self._options.method)
    rtol = property(lambda self: self._options.rtol)
    atol = property(lambda self: self._options.atol)
    step_size = property(lambda self: self._options.step_size)
    max_steps = property(lambda self: self._options.max_steps)
    gradient = property(lambda self: self._options.gradient)
    per_sample = property(lambda self: self._options.per_sample)
    _CORE = ("method", "rtol", "atol", "step_size", "max_steps", "gradient", "per_sample")

    @property
    def solver_options(self) -> dict[str, Any]:
        """The settings beyond :func:`solver_options`' named keywords that differ from ``ODENET_SOLVER``."""
        own = {f.name: getattr(self._options, f.name) for f in dataclasses.fields(self._options)}
        return {
            name: value
            for name, value in own.items()
            if name not in self._CORE and value is not getattr(ODENET_SOLVER, name)
        }

    def _reset_stats(self) -> None:
        self._stats = dict.fromkeys(self.STAT_KEYS, 0)
        self._adjoint_stats: list[Any] = []  # filled in place by stability when a backward pass runs

    def forward(self, y: Tensor) -> Tensor:
        solution = stability.solve(self.func, y, [0.0, self.t1], self._options)
        self._record(solution, y.shape[0])
        return solution.ys[-1]

    def _record(self, solution: stability.Solution, batch: int) -> None:
        per_sample = isinstance(solution.stats, list)
        runs = solution.stats if per_sample else [solution.stats]
        stats = self._stats
        stats["nfe"] += max(run.nfe for run in runs)
        stats["sample_nfe"] += sum(run.nfe for run in runs) if per_sample else runs[0].nfe * batch
        stats["accepted"] += sum(run.n_accepted for run in runs)
        stats["rejected"] += sum(run.n_rejected for run in runs)
        stats["solves"] += 1
        stats["samples"] += batch
        adjoint_stats = getattr(solution, "adjoint_stats", None)
        if adjoint_stats is not None and torch.is_grad_enabled():
            self._adjoint_stats.append(adjoint_stats)

    def pop_solver_stats(self) -> dict[str, int]:
        """The counters (module docstring) since the previous call; resets them."""
        stats = self._stats
        if self.gradient == "adjoint":
            stats["backward_nfe"] = sum(s.nfe for s in self._adjoint_stats)
        self._reset_stats()
        return stats

    def extra_repr(self) -> str:
        if self.step_size is not None:
            control = f"step_size={self.step_size:g}"
        else:
            control = f"rtol={self.rtol:g}, atol={self.atol:g}" + (", per_sample" if self.per_sample else "")
        return f"t1={self.t1:g}, method={self.method!r}, {control}, gradient={self.gradient!r}"


def downsampling_stem(in_channels: int, channels: int) -> tuple[nn.Conv2d, nn.Sequential]:
    """Chen et al.'s MNIST stem: conv3×3 → GN → ReLU → conv4×4/2 → GN → ReLU → conv4×4/2 (H, W → H/4, W/4).

    Returned as (first convolution, rest) so the first convolution can be the model's ``first_layer``."""
    first = nn.Conv2d(in_channels, channels, 3, padding=1)
    rest = nn.Sequential(
        group_norm(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 4, stride=2, padding=1),
        group_norm(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 4, stride=2, padding=1),
    )
    return first, rest


class ODENet(ImageClassifier):
    """normalize → downsampling stem (H/4 × W/4, ``channels``) → ODE block → GN → ReLU → pool → linear."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: int = 64,
        conv_layers: int = 2,
        time_dependent: bool = False,
        t1: float = 1.0,
        options: stability.SolverOptions | None = None,
        method: str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        step_size: float | None = None,
        max_steps: int | None = None,
        gradient: str | None = None,
        per_sample: bool | None = None,
        solver_options: Mapping[str, Any] | None = None,
        field_gain: float = 1.0,
    ) -> None:
        """``options`` and the keywords after it: the ODE block's solver (see :func:`solver_options`;
        dopri5 at rtol = atol = 1e-3 by default). ``field_gain``: the initial scale γ of f's closing
        GroupNorm (|f| ≈ γ at initialisation; trained freely afterwards), e.g. 1/t1 for a long integration
        that starts with the displacement t1 · γ of the t1 = 1 model."""
        if not (isinstance(field_gain, (int, float)) and math.isfinite(field_gain) and field_gain > 0):
            raise ValueError(f"field_gain must be finite and > 0, got {field_gain!r}")
        settings = dict(method=method, rtol=rtol, atol=atol, step_size=step_size, max_steps=max_steps,
                        gradient=gradient, per_sample=per_sample, solver_options=solver_options)
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        first, rest = downsampling_stem(in_channels, channels)
        block = ODEBlock(ODEFunc(channels, conv_layers, time_dependent), t1, options, **settings)
        head = nn.Sequential(
            group_norm(channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )
        super().__init__(in_channels, first, nn.Sequential(*rest, block), head, mean, std)
        self.ode_block = block
        init_weights(self)
        nn.init.constant_(block.func.norms[-1].weight, float(field_gain))

    def pop_solver_stats(self) -> dict[str, int]:
        """The ODE block's counters since the previous call (see :meth:`ODEBlock.pop_solver_stats`)."""
        return self.ode_block.pop_solver_stats()


class StemHeadNet(ImageClassifier):
    """An ODE-Net with its ODE block removed: normalize → the same downsampling stem → GN → ReLU → pool →
    linear. The base model of the ODE premium (robust accuracy with the block minus without it)."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: int = 32,
    ) -> None:
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        check_positive_int("channels", channels)
        first, rest = downsampling_stem(in_channels, channels)
        head = nn.Sequential(
            group_norm(channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )
        super().__init__(in_channels, first, rest, head, mean, std)
        init_weights(self)


register_model("odenet_stem_head")(StemHeadNet)


def _odenet_factory(name: str, doc: str, *, in_channels: int, channels: int, conv_layers: int, t1: float):
    """Register ``ODENet`` under ``name`` with these defaults (every other argument stays a keyword)."""
    factory = functools.partial(
        ODENet, in_channels=in_channels, channels=channels, conv_layers=conv_layers, t1=t1
    )
    factory.__doc__ = doc
    register_model(name)(factory)
    return factory


odenet_mnist_paper = _odenet_factory(
    "odenet_mnist_paper",
    "The paper's MNIST ODE-Net (Appendix A): f has 4 conv layers of 128 channels, t1 = 100, dopri5.",
    in_channels=1,
    channels=128,
    conv_layers=4,
    t1=100.0,
)
odenet_cifar_paper = _odenet_factory(
    "odenet_cifar_paper",
    "The paper's CIFAR-10 ODE-Net (Appendix A): f has 5 conv layers of 256 channels, t1 = 500, dopri5.",
    in_channels=3,
    channels=256,
    conv_layers=5,
    t1=500.0,
)
odenet_mnist_small = _odenet_factory(
    "odenet_mnist_small",
    "CPU-sized MNIST ODE-Net: 7×7×32 state, f with 2 conv layers, t1 = 1, dopri5 at rtol = atol = 1e-3.",
    in_channels=1,
    channels=32,
    conv_layers=2,
    t1=1.0,
)
odenet_cifar_small = _odenet_factory(
    "odenet_cifar_small",
    "CPU-sized CIFAR-10 ODE-Net: 8×8×64 state, f with 2 conv layers, t1 = 1, dopri5 at rtol = atol = 1e-3.",
    in_channels=3,
    channels=64,
    conv_layers=2,
    t1=1.0,
)
