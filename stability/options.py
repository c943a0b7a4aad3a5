"""``SolverOptions``: every setting of a solve as one frozen, validated value.

Built once (``SolverOptions(...)``, or ``solve``'s torchdiffeq-style keywords) and passed unchanged from
``nets.ODEBlock`` through ``solve`` to the integration loop; a variant is ``options.replace(rtol=1e-6)``
(``dataclasses.replace``: validated again), never attribute mutation.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stability.checks import as_float_list, check_tolerances
from stability.errors import ODEInputError
from stability.methods import IMPLICIT, METHOD_NAMES, TABLEAUX
from stability.step_control import PIController

DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-9
DEFAULT_MAX_STEPS = 100_000
GRADIENTS = ("backprop", "checkpoint", "adjoint")
# ErrorNorm(error, y_old, y_new, rtol, atol) -> the ratio compared with 1: a number, or [B] per sample.
ErrorNorm = Callable[[Tensor, Tensor, Tensor, float, float], float | Tensor]


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
        return self.tol if self.tol is not None else max(1e-10, 100 * torch.finfo(dtype).eps)


@dataclass(frozen=True)
class SolverOptions:
    """Settings of one solve (defaults as ``solve``'s keywords): step control (``step_size`` or ``grid`` for
    fixed steps; ``norm``: an ``ErrorNorm`` in place of the mixed RMS), ``per_sample`` control along dim 0,
    ``implicit`` (backward Euler's Newton–Krylov), and ``gradient`` with its own options (``checkpoint_*``,
    ``adjoint_*``: given for another gradient they are an error). ``compile=True``: each step of an explicit
    RK method — stages with func traced in, stage sums, error ratio — runs as one ``torch.compile`` graph
    (``stability.compiled``: equal to rounding, not bitwise; seconds to compile, once per func, method and
    tolerances); shared step control and gradient "backprop" or "checkpoint" only, else an ODEInputError.
    ``throw=False``: a failed integration returns its partial solution with a status per sample
    (``stability.status``) instead of raising."""

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
    compile: bool = False
    throw: bool = True

    def __post_init__(self) -> None:
        _known_method(self.method)
        check_tolerances(self.rtol, self.atol)
        _require(self.step_size is None or self.grid is None, "give either step_size or grid, not both")
        if self.step_size is not None:
            object.__setattr__(self, "step_size", float(self.step_size))
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(as_float_list(self.grid, "grid")))
        adaptive = self.fixed_step or (self.method in TABLEAUX and TABLEAUX[self.method].adaptive)
        compilable = self.method in TABLEAUX and not self.per_sample and self.gradient != "adjoint"
        misplaced = sorted(name for name, default in _FIELD_DEFAULTS.items() if _gradient_of(name) not in
                           (None, self.gradient) and getattr(self, name) != default)
        for ok, message in (
            (self.step_size is None or (math.isfinite(self.step_size) and self.step_size > 0),
             f"step_size must be positive and finite, got {self.step_size}"),
            (self.fixed_step or self.method not in IMPLICIT,
             f"method {self.method!r} is fixed-step: give step_size or grid"),
            (adaptive, f"method '{self.method}' has no embedded error estimate: give step_size or grid"),
            (_positive_int(self.max_steps), f"max_steps must be a positive integer, got {self.max_steps!r}"),
            (self.max_step > 0, f"max_step must be positive, got {self.max_step}"),
            (self.first_step is None or (math.isfinite(self.first_step) and self.first_step > 0),
             f"first_step must be positive and finite, got {self.first_step}"),
            (isinstance(self.controller, PIController), "controller must be a PIController"),
            (isinstance(self.implicit, (ImplicitOptions, type(None))), "implicit must be ImplicitOptions"),
            (self.implicit is None or self.method in IMPLICIT,
             f"implicit options apply to method='backward_euler' only, not {self.method!r}"),
            (self.gradient in GRADIENTS,
             f"gradient must be 'backprop', 'checkpoint' or 'adjoint', got {self.gradient!r}"),
            (not misplaced, f"unknown options for gradient={self.gradient!r}: {', '.join(misplaced)}"),
            (self.checkpoint_every is None or _positive_int(self.checkpoint_every),
             f"checkpoint_every must be a positive integer, got {self.checkpoint_every!r}"),
            (isinstance(self.compile, bool), f"compile must be True or False, got {self.compile!r}"),
            (isinstance(self.throw, bool), f"throw must be True or False, got {self.throw!r}"),
            (self.throw or self.gradient != "adjoint",
             "throw=False does not combine with gradient='adjoint': the adjoint integrates back from every "
             "sample's final state, which a failed sample does not have; use gradient='backprop' or "
             "'checkpoint'"),
            (not self.compile or compilable,
             f"compile=True compiles explicit Runge–Kutta steps under shared step control with gradient "
             f"'backprop' or 'checkpoint'; not method={self.method!r}, per_sample={self.per_sample}, "
             f"gradient={self.gradient!r}"),
        ):
            _require(ok, message)
        if self.gradient == "adjoint":
            self._check_adjoint()

    def _check_adjoint(self) -> None:
        backward = self.adjoint_method or self.method
        _known_method(backward)
        for ok, message in (
            (self.adjoint_norm in ("mixed", "seminorm"),
             f"adjoint_norm must be 'mixed' or 'seminorm', got {self.adjoint_norm!r}"),
            (self.method in TABLEAUX and backward in TABLEAUX,
             f"the adjoint method needs explicit Runge–Kutta methods, got {self.method!r}/{backward!r} "
             "(backward_euler's implicit-function-theorem backprop stores one evaluation per step)"),
            (self.fixed_step or getattr(TABLEAUX.get(backward), "adaptive", True),
             f"adjoint_method {backward!r} has no error estimate for the adaptive backward solve"),
        ):
            _require(ok, message)
        check_tolerances(1.0 if self.adjoint_rtol is None else self.adjoint_rtol,
                         1.0 if self.adjoint_atol is None else self.adjoint_atol)
        if self.adjoint_params is not None:
            params = tuple(self.adjoint_params)
            _require(all(isinstance(p, Tensor) for p in params), "adjoint_params: a sequence of tensors")
            object.__setattr__(self, "adjoint_params", params)

    @property
    def fixed_step(self) -> bool:
        return self.step_size is not None or self.grid is not None

    def replace(self, **changes) -> SolverOptions:
        """A copy with ``changes`` applied (``dataclasses.replace``), validated like a new value."""
        unknown = sorted(set(changes) - _FIELDS)
        gradient = changes.get("gradient", self.gradient)
        _require(not unknown, f"unknown options for gradient={gradient!r}: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


_FIELDS = frozenset(f.name for f in dataclasses.fields(SolverOptions))
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SolverOptions)}


def _gradient_of(option: str) -> str | None:
    """The gradient strategy an option belongs to (``adjoint_*``, ``checkpoint_*``), None for all others."""
    return next((gradient for gradient in GRADIENTS if option.startswith(gradient + "_")), None)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ODEInputError(message)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _known_method(method: str) -> None:
    _require(isinstance(method, str) and method in METHOD_NAMES,
             f"unknown method {method!r}; available: {', '.join(sorted(METHOD_NAMES))}")


_DEFAULTS = SolverOptions()


def option_keywords(function):
    """Decorator: ``function``'s signature lists SolverOptions' fields in place of ``**keywords``, so
    ``help()``, IDEs and ``inspect.signature`` show the keywords an entry point accepts (defined once)."""
    signature = inspect.signature(function)
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters += [inspect.Parameter(f.name, keyword, default=f.default, annotation=f.type)
                   for f in dataclasses.fields(SolverOptions)]
    function.__signature__ = signature.replace(parameters=parameters)
    return function


def as_options(options: SolverOptions | None, keywords: dict, **implied) -> SolverOptions:
    """The entry points' merge: ``options`` (default: the defaults), then the caller's ``keywords``, then
    what the entry point implies (``solve_adjoint``: gradient="adjoint"); one validation of the result."""
    if isinstance(options, Mapping):  # torchdiffeq's options=dict(step_size=...): the same keywords
        options, keywords = None, {**options, **keywords}
    _require(options is None or isinstance(options, SolverOptions),
             f"options must be a SolverOptions (or a dict of its fields), got {type(options).__name__}")
    changes = {**keywords, **implied}
    return (options or _DEFAULTS).replace(**changes) if changes else (options or _DEFAULTS)
