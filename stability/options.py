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
from stability.methods import IMPLICIT, METHOD_NAMES, STIFF, TABLEAUX
from stability.pid_controller import PIDController
from stability.step_control import NAMED_NORMS, PIController

DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-9
DEFAULT_MAX_STEPS = 100_000
GRADIENTS = ("backprop", "checkpoint", "adjoint")
# ErrorNorm(error, y_old, y_new, rtol, atol) -> the ratio compared with 1: a number, or [B] per sample
# (per-sample mode: rtol and atol are then numbers or float64 tensors [B] of the samples in the step).
ErrorNorm = Callable[[Tensor, Tensor, Tensor, float, float], float | Tensor]
Controller = PIController | PIDController


class Unstated(float):
    """A tolerance the caller did not state: the default, or one ``replace`` carried over. Fixed steps
    (``step_size``/``grid``) ignore it; a tolerance stated together with fixed steps is an error instead of
    being silently ignored. Behaves as the float it holds."""

    __slots__ = ()


@dataclass(frozen=True)
class ImplicitOptions:
    """Settings of the per-step nonlinear solve and of the adjoint linear solve of the backward pass.

    ``tol``: Newton stops at ‖G(z)‖_rms ≤ tol·max(1, ‖z‖_rms) (None: 1e-10 in float64, ~1e-5 in float32);
    the backward linear solve stops at a relative residual of ``tol``. Caps bound every loop. ``jvp``:
    "forward" (forward-mode AD) or "reverse" (double backward) Jacobian-vector products for Newton.
    The adaptive stiff methods (``rodas4``, ``kvaerno5``) solve (I − hγJ)x = r with ``jacobian``: "dense"
    (``torch.func.jacrev`` and LU), "krylov" (GMRES to ``tol`` on Jacobian-vector products, no matrix), or
    "auto" (dense while a system has at most ``dense_size`` unknowns; ``stability.linearization``).
    """

    tol: float | None = None
    jvp: str = "forward"
    max_newton: int = 12
    max_linear: int = 60
    restart: int = 20
    max_fixed_point: int = 100
    jacobian: str = "auto"
    dense_size: int = 256

    def __post_init__(self) -> None:
        if self.tol is not None and not (math.isfinite(self.tol) and self.tol > 0):
            raise ODEInputError(f"tol must be positive and finite, got {self.tol}")
        for name in ("max_newton", "max_linear", "restart", "max_fixed_point", "dense_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ODEInputError(f"{name} must be a positive integer, got {value!r}")
        if self.jvp not in ("forward", "reverse"):
            raise ODEInputError(f"jvp must be 'forward' or 'reverse', got {self.jvp!r}")
        if self.jacobian not in ("auto", "dense", "krylov"):
            raise ODEInputError(f"jacobian must be 'auto', 'dense' or 'krylov', got {self.jacobian!r}")

    def tolerance(self, dtype: torch.dtype) -> float:
        return self.tol if self.tol is not None else max(1e-10, 100 * torch.finfo(dtype).eps)


@dataclass(frozen=True)
class SolverOptions:
    """Settings of one solve (defaults as ``solve``'s keywords): step control (``step_size`` or ``grid`` for
    fixed steps, which refuse stated tolerances; adaptive: ``rtol``/``atol`` — numbers, or tensors [B] of
    per-sample values with ``per_sample`` —, ``controller`` a ``PIController`` or ``PIDController``,
    ``min_step``/``force_min_step``, ``norm``: "rms" (the default mixed RMS), "max" or an ``ErrorNorm``),
    ``per_sample`` control along dim 0, ``time_dtype`` (the dtype of the t func receives; None: y0's),
    ``implicit`` (backward Euler's Newton–Krylov), and ``gradient`` with its own options (``checkpoint_*``,
    ``adjoint_*``: given for another gradient they are an error). ``compile=True``: each step of an explicit
    RK method — stages with func traced in, stage sums, error ratio — runs as one ``torch.compile`` graph
    (``stability.compiled``: equal to rounding, not bitwise, and not always the same steps; seconds to
    compile, once per func, method and tolerances); shared step control and gradient "backprop" or
    "checkpoint" only, else an ODEInputError. ``min_step``: a proposed step below it raises
    ``StepSizeUnderflowError``, or with ``force_min_step`` is taken at min_step and accepted whatever its
    (finite) error. ``throw=False``: a failed integration returns its partial solution with a status per
    sample (``stability.status``) instead of raising."""

    method: str = "dopri5"
    rtol: float | Tensor = Unstated(DEFAULT_RTOL)
    atol: float | Tensor = Unstated(DEFAULT_ATOL)
    step_size: float | None = None
    grid: tuple[float, ...] | None = None
    first_step: float | None = None
    max_step: float = math.inf
    min_step: float = 0.0
    force_min_step: bool = False
    max_steps: int = DEFAULT_MAX_STEPS
    controller: Controller = PIController()
    norm: ErrorNorm | str | None = None
    per_sample: bool = False
    time_dtype: torch.dtype | None = None
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
        self._set_tolerances()
        _require(self.step_size is None or self.grid is None, "give either step_size or grid, not both")
        if self.step_size is not None:
            object.__setattr__(self, "step_size", float(self.step_size))
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(as_float_list(self.grid, "grid")))
        adaptive = self.fixed_step or self.method in STIFF or (
            self.method in TABLEAUX and TABLEAUX[self.method].adaptive)
        compilable = self.method in TABLEAUX and not self.per_sample and self.gradient != "adjoint"
        misplaced = sorted(name for name, (gradient, default) in _GRADIENT_FIELDS.items()
                           if gradient != self.gradient and getattr(self, name) != default)
        for ok, message in (
            (self.step_size is None or (math.isfinite(self.step_size) and self.step_size > 0),
             f"step_size must be positive and finite, got {self.step_size}"),
            (self.fixed_step or self.method not in IMPLICIT,
             f"method {self.method!r} is fixed-step: give step_size or grid"),
            (adaptive, f"method '{self.method}' has no embedded error estimate: give step_size or grid"),
            (_positive_int(self.max_steps), f"max_steps must be a positive integer, got {self.max_steps!r}"),
            (self.max_step > 0, f"max_step must be positive, got {self.max_step}"),
            (_number(self.min_step) and math.isfinite(self.min_step) and 0 <= self.min_step <= self.max_step,
             f"min_step must be a finite number in [0, max_step={self.max_step}], got {self.min_step!r}"),
            (isinstance(self.force_min_step, bool),
             f"force_min_step must be True or False, got {self.force_min_step!r}"),
            (not self.force_min_step or self.min_step > 0, "force_min_step=True needs a min_step > 0"),
            (not (self.fixed_step and (self.min_step > 0 or self.force_min_step)),
             "min_step and force_min_step control adaptive steps; fixed steps (step_size/grid) take exactly "
             "the steps given: drop one or the other"),
            (self.time_dtype in (None, torch.float32, torch.float64),
             f"time_dtype must be None, torch.float32 or torch.float64, got {self.time_dtype!r}"),
            (self.first_step is None or (math.isfinite(self.first_step) and self.first_step > 0),
             f"first_step must be positive and finite, got {self.first_step}"),
            (isinstance(self.controller, (PIController, PIDController)),
             f"controller must be a PIController or a PIDController, got {type(self.controller).__name__}"),
            (self.norm is None or callable(self.norm) or self.norm in NAMED_NORMS,
             f"norm must be a function (ErrorNorm) or one of {', '.join(map(repr, NAMED_NORMS))}, got "
             f"{self.norm!r}"),
            (isinstance(self.implicit, (ImplicitOptions, type(None))), "implicit must be ImplicitOptions"),
            (self.implicit is None or self.method in IMPLICIT or self.method in STIFF,
             f"implicit options apply to the implicit methods ({', '.join((*IMPLICIT, *STIFF))}) only, not "
             f"{self.method!r}"),
            (self.method != "kvaerno5" or not any(isinstance(x, Tensor) for x in (self.rtol, self.atol)),
             "kvaerno5 takes numbers for rtol and atol (its Newton iteration's stopping test uses them); "
             "per-sample tolerance tensors work with rodas4 and the explicit methods"),
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

    def _set_tolerances(self) -> None:
        """rtol and atol validated (numbers; 1-D tensors [B] in per-sample mode) and normalised (a 0-d tensor
        to a float); stated together with fixed steps they are an error, not silently ignored."""
        rtol, atol = check_tolerances(self.rtol, self.atol, per_sample=self.per_sample)
        stated = [name for name in ("rtol", "atol") if not isinstance(getattr(self, name), Unstated)]
        _require(not (stated and self.fixed_step),
                 f"{' and '.join(stated)} given with fixed steps (step_size={self.step_size}, grid="
                 f"{'given' if self.grid is not None else None}): fixed steps take exactly the steps given "
                 f"and have no error control, so tolerances would be ignored. Drop {'/'.join(stated)} for "
                 f"fixed steps, or drop step_size/grid for adaptive steps at these tolerances")
        for name, value in (("rtol", rtol), ("atol", atol)):
            if isinstance(getattr(self, name), Unstated):
                value = Unstated(value)
            object.__setattr__(self, name, value)

    def _check_adjoint(self) -> None:
        backward = self.adjoint_method or self.method
        _known_method(backward)
        for ok, message in (
            (self.adjoint_norm in ("mixed", "seminorm"),
             f"adjoint_norm must be 'mixed' or 'seminorm', got {self.adjoint_norm!r}"),
            (self.method in TABLEAUX and backward in TABLEAUX,
             f"the adjoint method needs explicit Runge–Kutta methods, got {self.method!r}/{backward!r}: use "
             f"gradient='backprop' or 'checkpoint' for the implicit ones (backward_euler's and "
             f"kvaerno5's implicit-function-theorem gradients store one evaluation per stage; rodas4's "
             f"backprop is exact and 'checkpoint' bounds its memory)"),
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
        for name in ("rtol", "atol"):  # carried over, not stated by this call
            value = getattr(self, name)
            if name not in changes and isinstance(value, float) and not isinstance(value, Unstated):
                changes[name] = Unstated(value)
        return dataclasses.replace(self, **changes)


_FIELDS = frozenset(f.name for f in dataclasses.fields(SolverOptions))
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SolverOptions)}


def _gradient_of(option: str) -> str | None:
    """The gradient strategy an option belongs to (``adjoint_*``, ``checkpoint_*``), None for all others."""
    return next((gradient for gradient in GRADIENTS if option.startswith(gradient + "_")), None)


# The options of one gradient strategy (``checkpoint_*``, ``adjoint_*``): name -> (strategy, default).
_GRADIENT_FIELDS = {name: (_gradient_of(name), default) for name, default in _FIELD_DEFAULTS.items()
                    if _gradient_of(name) is not None}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ODEInputError(message)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def time_precision(options: SolverOptions, y0, t) -> SolverOptions:
    """``options`` with ``time_dtype=float64`` when t is a float64 tensor and y0 of lower precision (unless
    ``time_dtype`` is set): func then gets t at its own resolution, not rounded to y0's dtype (in float32,
    t = 1e6 resolves 0.06)."""
    if (options.time_dtype is None and isinstance(t, Tensor) and t.dtype == torch.float64
            and isinstance(y0, Tensor) and y0.dtype != torch.float64):
        return options.replace(time_dtype=torch.float64)
    return options


def as_options(options: SolverOptions | None, keywords: dict, **implied) -> SolverOptions:
    """The entry points' merge: ``options`` (default: the defaults), then the caller's ``keywords``, then
    what the entry point implies (``solve_adjoint``: gradient="adjoint"); one validation of the result.
    Keywords of plain values only (``method="dopri5", rtol=1e-6``, no ``options``) are validated once: the
    frozen value is kept and returned again for the same keywords (a solve in a loop skips re-validation)."""
    key = _validated_key(options, keywords, implied)
    if key is None:
        return _merge(options, keywords, implied)
    if key not in _VALIDATED:
        if len(_VALIDATED) >= _VALIDATED_SIZE:
            _VALIDATED.clear()
        _VALIDATED[key] = _merge(options, keywords, implied)  # raises (and keeps nothing) when invalid
    return _VALIDATED[key]


# Validated options of keyword-only calls, by (name, type, repr) of each value: 1, 1.0 and True, or 0.0 and
# -0.0, are different keys. Bounded: cleared when full.
_VALIDATED: dict[tuple, SolverOptions] = {}
_VALIDATED_SIZE = 256
_PLAIN_TYPES = (str, bool, int, float, type(None), torch.dtype)


def _validated_key(options: SolverOptions | None, keywords: dict, implied: dict) -> tuple | None:
    """The key of a keyword-only call whose values are all of ``_PLAIN_TYPES`` exactly, else None."""
    values = (*keywords.values(), *implied.values())
    if options is not None or not all(type(v) in _PLAIN_TYPES for v in values):
        return None
    return (tuple((k, type(v), repr(v)) for k, v in keywords.items()),
            tuple((k, type(v), repr(v)) for k, v in implied.items()))


def _merge(options: SolverOptions | None, keywords: dict, implied: dict) -> SolverOptions:
    if isinstance(options, Mapping):  # torchdiffeq's options=dict(step_size=...): the same keywords
        options, keywords = None, {**options, **keywords}
    _require(options is None or isinstance(options, SolverOptions),
             f"options must be a SolverOptions (or a dict of its fields), got {type(options).__name__}")
    for name, value in implied.items():  # e.g. solve_adjoint(..., gradient="backprop"): a contradiction
        given = keywords.get(name, value if options is None else getattr(options, name))
        _require(given == value or (name not in keywords and given == _FIELD_DEFAULTS[name]),
                 f"this entry point implies {name}={value!r}, but {name}={given!r} was given: call "
                 f"solve(...) with {name}={given!r} instead, or drop it")
    changes = {**keywords, **implied}
    return (options or _DEFAULTS).replace(**changes) if changes else (options or _DEFAULTS)
