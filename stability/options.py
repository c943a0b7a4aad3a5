"""``SolverOptions``: every setting of a solve as one frozen, validated value.

Built once (``SolverOptions(...)``, or ``solve``'s torchdiffeq-style keywords) and passed unchanged from
``nets.ODEBlock`` through ``solve`` to the integration loop; a variant is ``options.replace(rtol=1e-6)``
(``dataclasses.replace``: validated again), never attribute mutation.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stability.checks import as_float_list, check_tolerances
from stability.errors import ODEInputError
from stability.methods import IMPLICIT, METHOD_NAMES, TABLEAUX
from stability.newton_krylov import default_tolerance
from stability.step_control import PIController

DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-9
DEFAULT_MAX_STEPS = 100_000
GRADIENTS = ("backprop", "checkpoint", "adjoint")
_ADJOINT_ONLY = ("adjoint_method", "adjoint_rtol", "adjoint_atol", "adjoint_params")
# ErrorNorm(error, y_old, y_new, rtol, atol) -> the ratio compared with 1, shape [] or [B] (per sample).
ErrorNorm = Callable[[Tensor, Tensor, Tensor, float, float], Tensor]


@dataclass(frozen=True)
class ImplicitOptions:
    """Settings of the per-step nonlinear solve and of the adjoint linear solve of the backward pass.

    ``tol``: Newton stops at ‖G(z)‖_rms ≤ tol·max(1, ‖z‖_rms) (None: 1e-10 in float64, ~1e-5 in float32);
    the backward linear solve stops at a relative residual of ``tol``. Caps bound every loop. ``jvp``:
    "forward" (forward-mode AD) or "reverse" (double backward) Jacobian-vector products for Newton.
    """

    tol: float | None = None
    jvp: str = "forward"
    max_newton: int = 12
    max_linear: int = 60
    restart: int = 20
    max_fixed_point: int = 100

    def __post_init__(self) -> None:
        if self.tol is not None and not (math.isfinite(self.tol) and self.tol > 0):
            raise ODEInputError(f"tol must be positive and finite, got {self.tol}")
        for name in ("max_newton", "max_linear", "restart", "max_fixed_point"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ODEInputError(f"{name} must be a positive integer, got {value!r}")
        if self.jvp not in ("forward", "reverse"):
            raise ODEInputError(f"jvp must be 'forward' or 'reverse', got {self.jvp!r}")

    def tolerance(self, dtype: torch.dtype) -> float:
        return self.tol if self.tol is not None else default_tolerance(dtype)


@dataclass(frozen=True)
class SolverOptions:
    """Settings of one solve (defaults as ``solve``'s keywords).

    Step control: ``method``; ``rtol``/``atol`` (mixed error norm, or ``norm``, see ``step_control``);
    ``step_size`` or ``grid`` for fixed steps; ``first_step``, ``max_step``, ``max_steps``; ``controller``.
    ``per_sample``: independent step control for each sample along dim 0. ``implicit``: Newton–Krylov
    settings of ``backward_euler``. Gradients: ``gradient`` ∈ {"backprop", "checkpoint", "adjoint"} with
    ``checkpoint_every`` (checkpoint) or ``adjoint_method``/``adjoint_rtol``/``adjoint_atol``/
    ``adjoint_params``/``adjoint_norm`` (adjoint).
    """

    method: str = "dopri5"
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    step_size: float | None = None
    grid: tuple[float, ...] | None = None
    first_step: float | None = None
    max_step: float = math.inf
    max_steps: int = DEFAULT_MAX_STEPS
    controller: PIController = PIController()
    norm: ErrorNorm | None = None
    per_sample: bool = False
    implicit: ImplicitOptions | None = None
    gradient: str = "backprop"
    checkpoint_every: int | None = None
    adjoint_method: str | None = None
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    adjoint_params: tuple[Tensor, ...] | None = field(default=None, compare=False)
    adjoint_norm: str = "mixed"

    def __post_init__(self) -> None:
        _known_method(self.method)
        check_tolerances(self.rtol, self.atol)
        if self.step_size is not None and self.grid is not None:
            raise ODEInputError("give either step_size or grid, not both")
        if self.step_size is not None:
            step = float(self.step_size)
            if not (math.isfinite(step) and step > 0):
                raise ODEInputError(f"step_size must be positive and finite, got {self.step_size}")
            self._set("step_size", step)
        if self.grid is not None:
            self._set("grid", tuple(as_float_list(self.grid, "grid")))
        fixed = self.fixed_step
        if not fixed:
            if self.method in IMPLICIT:
                raise ODEInputError(f"method {self.method!r} is fixed-step: give step_size or grid")
            if not TABLEAUX[self.method].adaptive:
                raise ODEInputError(
                    f"method '{self.method}' has no embedded error estimate: give step_size or grid"
                )
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ODEInputError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        if not self.max_step > 0:
            raise ODEInputError(f"max_step must be positive, got {self.max_step}")
        if self.first_step is not None and not (math.isfinite(self.first_step) and self.first_step > 0):
            raise ODEInputError(f"first_step must be positive and finite, got {self.first_step}")
        if self.controller is None:
            self._set("controller", PIController())
        if not isinstance(self.controller, PIController):
            raise ODEInputError(f"controller must be a PIController, got {type(self.controller).__name__}")
        if self.implicit is not None:
            if not isinstance(self.implicit, ImplicitOptions):
                raise ODEInputError(
                    f"implicit must be an ImplicitOptions, got {type(self.implicit).__name__}"
                )
            if self.method not in IMPLICIT:
                raise ODEInputError(
                    f"implicit options apply to method='backward_euler' only, not {self.method!r}"
                )
        self._set("per_sample", bool(self.per_sample))
        self._check_gradient()

    def _check_gradient(self) -> None:
        if self.gradient not in GRADIENTS:
            raise ODEInputError(
                f"gradient must be 'backprop', 'checkpoint' or 'adjoint', got {self.gradient!r}"
            )
        misplaced = []
        if self.gradient != "adjoint":
            misplaced += [name for name in _ADJOINT_ONLY if getattr(self, name) is not None]
            misplaced += ["adjoint_norm"] if self.adjoint_norm != "mixed" else []
        if self.gradient != "checkpoint" and self.checkpoint_every is not None:
            misplaced.append("checkpoint_every")
        if misplaced:
            raise ODEInputError(
                f"unknown options for gradient={self.gradient!r}: {', '.join(sorted(misplaced))}"
            )
        every = self.checkpoint_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ODEInputError(f"checkpoint_every must be a positive integer, got {every!r}")
        if self.gradient != "adjoint":
            return
        if self.adjoint_norm not in ("mixed", "seminorm"):
            raise ODEInputError(f"adjoint_norm must be 'mixed' or 'seminorm', got {self.adjoint_norm!r}")
        for name in (self.method, self.adjoint_method or self.method):
            _known_method(name)
            if name not in TABLEAUX:
                raise ODEInputError(
                    f"the adjoint method needs explicit Runge–Kutta methods, got {name!r} (backward_euler's "
                    f"implicit-function-theorem backprop already stores one evaluation per step)"
                )
        if not self.fixed_step and not TABLEAUX[self.adjoint_method or self.method].adaptive:
            raise ODEInputError(
                f"adjoint_method {self.adjoint_method!r} has no error estimate for the adaptive backward "
                f"solve"
            )
        for name in ("adjoint_rtol", "adjoint_atol"):
            value = getattr(self, name)
            if value is not None:
                check_tolerances(value, 1.0) if name == "adjoint_rtol" else check_tolerances(1.0, value)
        if self.adjoint_params is not None:
            params = tuple(self.adjoint_params)
            if not all(isinstance(p, Tensor) for p in params):
                raise ODEInputError("adjoint_params must be a sequence of tensors")
            self._set("adjoint_params", params)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    @property
    def fixed_step(self) -> bool:
        return self.step_size is not None or self.grid is not None

    def replace(self, **changes) -> SolverOptions:
        """A copy with ``changes`` applied (``dataclasses.replace``), validated like a new value."""
        return _replace(self, changes)

    @classmethod
    def build(cls, options: SolverOptions | None = None, **keywords) -> SolverOptions:
        """``options`` (default: the defaults) with ``keywords`` applied; unknown keywords raise."""
        base = cls() if options is None else options
        if not isinstance(base, SolverOptions):
            raise ODEInputError(f"options must be a SolverOptions, got {type(base).__name__}")
        return _replace(base, keywords) if keywords else base


_FIELDS = frozenset(f.name for f in dataclasses.fields(SolverOptions))


def _replace(options: SolverOptions, changes: dict) -> SolverOptions:
    unknown = sorted(set(changes) - _FIELDS)
    if unknown:
        gradient = changes.get("gradient", options.gradient)
        raise ODEInputError(f"unknown options for gradient={gradient!r}: {', '.join(unknown)}")
    return dataclasses.replace(options, **changes)


def _known_method(method: str) -> None:
    if not isinstance(method, str) or method not in METHOD_NAMES:
        raise ODEInputError(f"unknown method {method!r}; available: {', '.join(sorted(METHOD_NAMES))}")


def option_keywords(function):
    """Decorator: ``function``'s signature lists SolverOptions' fields in place of ``**keywords``, so
    ``help()``, IDEs and ``inspect.signature`` show the keywords an entry point accepts (defined once)."""
    signature = inspect.signature(function)
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    parameters += [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in dataclasses.fields(SolverOptions)
    ]
    function.__signature__ = signature.replace(parameters=parameters)
    return function


def as_options(options: SolverOptions | None, keywords: dict, **implied) -> SolverOptions:
    """The entry points' merge: ``options``, then the caller's ``keywords``, then what the entry point implies
    (``solve_adjoint`` implies gradient="adjoint"); one validation of the result."""
    if options is not None and not isinstance(options, SolverOptions):
        raise ODEInputError(f"options must be a SolverOptions, got {type(options).__name__}")
    changes = {**keywords, **implied}
    if options is None:
        unknown = sorted(set(changes) - _FIELDS)
        if unknown:
            gradient = changes.get("gradient", "backprop")
            raise ODEInputError(f"unknown options for gradient={gradient!r}: {', '.join(unknown)}")
        return SolverOptions(**changes)
    return _replace(options, changes) if changes else options


__all__: Sequence[str] = (
    "ImplicitOptions",
    "SolverOptions",
    "option_keywords",
    "DEFAULT_RTOL",
    "DEFAULT_ATOL",
    "DEFAULT_MAX_STEPS",
    "as_options",
)
