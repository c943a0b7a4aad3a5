"""The linear systems of the stiff methods: (I − hγJ) x = r with J = ∂f/∂y at one point (t, y).

``DenseLinearization``: J built by ``torch.func.jacrev`` — one matrix per sample, [B, n, n], under per-sample
control (samples are independent there: the Jacobian of Σ_b f_b is block diagonal), one [N, N] matrix of the
whole state under shared control — and the systems solved by LU (``torch.linalg.lu_factor``/``lu_solve``,
batched over samples). Differentiable: gradients flow through J (second derivatives of f) and the solves.

``KrylovLinearization``: no matrix at all. GMRES (``stability.krylov``) on v ↦ v − hγ J v with J v from
forward-mode AD (``newton_krylov.make_jvp``), for states too large for a dense J (a conv field). Its gradient
comes from the implicit-function theorem (``_KrylovSolve``): x = r + hγ J x, so the backward pass solves
(I − hγJ)ᵀ λ = g by GMRES on vector-Jacobian products and sends λ into the graph of r + hγ J(y) x.

``linearize`` picks one by ``ImplicitOptions.jacobian`` ("auto": dense up to ``dense_size`` unknowns per
system, Krylov above).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.autograd.function import once_differentiable

from stability.errors import NonConvergenceError
from stability.krylov import gmres
from stability.newton_krylov import make_jvp
from stability.options import ImplicitOptions
from stability.solution import SolverStats


@dataclass
class StiffStats(SolverStats):
    """SolverStats plus the linear algebra of the stiff methods: dense Jacobians J = ∂f/∂y (``jacrev``), LU
    factorisations, linear solves, Jacobian-vector products (∂f/∂t, Krylov matvecs, backward products), and
    the ESDIRK's Newton iterations and failed solves. ``nfe`` counts evaluations of f only."""

    n_jacobians: int = 0
    n_factorizations: int = 0
    n_linear_solves: int = 0
    n_jvp: int = 0
    newton_iterations: int = 0
    newton_failures: int = 0


# The counters StiffStats adds to SolverStats (n_jacobians, …, newton_failures).
STIFF_COUNTERS = tuple(name for name in StiffStats.__dataclass_fields__
                       if name not in SolverStats.__dataclass_fields__)


class SampleCounts:
    """``StiffStats``' linear-algebra counters of a per-sample solve: one int64 tensor [B] per counter.

    Written to as a ``StiffStats`` is (``stats.n_jvp += 1``), so the steps count the same way under both
    controls: reading a counter gives 0 and assigning adds the value to every sample of ``active`` (the rows
    being stepped), or row by row when it is a tensor [len(active)] (e.g. the samples whose Newton failed).
    Each active sample is charged the work done on the batch it is part of, as its ``nfe`` is."""

    def __init__(self, batch: int, device: torch.device) -> None:
        object.__setattr__(self, "counts", {name: torch.zeros(batch, dtype=torch.int64, device=device)
                                            for name in STIFF_COUNTERS})
        object.__setattr__(self, "active", torch.arange(batch, device=device))

    def __getattr__(self, name: str) -> int:
        if name in STIFF_COUNTERS:
            return 0
        raise AttributeError(name)

    def __setattr__(self, name: str, value: int | Tensor) -> None:
        if name == "active":
            object.__setattr__(self, name, value)
            return
        if name not in STIFF_COUNTERS:
            raise AttributeError(f"no counter {name!r}")
        added = value.to(torch.int64) if isinstance(value, Tensor) else torch.full_like(self.active, value)
        self.counts[name].index_add_(0, self.active, added)

    def clone(self) -> SampleCounts:
        other = SampleCounts.__new__(SampleCounts)
        object.__setattr__(other, "counts", {name: x.clone() for name, x in self.counts.items()})
        object.__setattr__(other, "active", self.active)
        return other

    def sample(self, b: int) -> dict[str, int]:
        """Sample b's counters, by name."""
        return {name: int(x[b]) for name, x in self.counts.items()}


class Linearization:
    """J at (t, y); ``factor(hγ)`` prepares I − hγJ (hγ a number, or a float64 tensor [B] per sample),
    ``solve(r)`` returns x = (I − hγJ)⁻¹ r (same shape as y), ``time_derivative()`` ∂f/∂t at (t, y)."""

    def __init__(self, func: Callable, t: Tensor, y: Tensor, per_sample: bool, options: ImplicitOptions,
                 stats: StiffStats) -> None:
        self.func, self.t, self.y, self.per_sample = func, t, y, per_sample
        self.options, self.stats = options, stats
        self.h_gamma: float | Tensor | None = None

    def time_derivative(self) -> Tensor:
        """∂f/∂t at (t, y) by one forward-mode product in t (per sample when t has shape [B]); zero when f
        does not depend on t."""
        self.stats.n_jvp += 1
        y = self.y.detach() if not torch.is_grad_enabled() else self.y
        try:
            with _forward_mode():
                value = self.func(forward_ad.make_dual(self.t, torch.ones_like(self.t)), y)
                derivative = forward_ad.unpack_dual(value).tangent
            return torch.zeros_like(value) if derivative is None else derivative
        except RuntimeError:  # func converts t to a Python number: a central difference instead
            delta = math.sqrt(torch.finfo(self.t.dtype).eps) * max(1.0, float(self.t.abs().max()))
            derivative = (self.func(self.t + delta, y) - self.func(self.t - delta, y)) / (2 * delta)
        return derivative

    def column(self, h_gamma: float | Tensor, like: Tensor):
        if isinstance(h_gamma, Tensor):
            return h_gamma.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
        return h_gamma


class DenseLinearization(Linearization):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        y, shape, func, t = self.y, self.y.shape, self.func, self.t
        self.rows = shape[0] if self.per_sample else 1
        self.jacobian = _jacobian(lambda z: func(t, z.view(shape)).reshape(self.rows, -1),
                                  y.reshape(self.rows, -1))  # [B, n, n] per sample, or [1, N, N]
        self.stats.n_jacobians += 1
        self.identity = torch.eye(self.jacobian.shape[-1], dtype=y.dtype, device=y.device)

    def factor(self, h_gamma: float | Tensor) -> None:
        self.h_gamma = h_gamma
        scale = h_gamma.to(self.y.dtype).view(-1, 1, 1) if isinstance(h_gamma, Tensor) else h_gamma
        self.lu, self.pivots = torch.linalg.lu_factor(self.identity - scale * self.jacobian)
        self.stats.n_factorizations += 1

    def solve(self, rhs: Tensor) -> Tensor:
        self.stats.n_linear_solves += 1
        x = torch.linalg.lu_solve(self.lu, self.pivots, rhs.reshape(self.rows, -1, 1))
        return x.view(rhs.shape)


class KrylovLinearization(Linearization):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.field_jvp = make_jvp(lambda z: self.func(self.t, z), self.options.jvp)

    def factor(self, h_gamma: float | Tensor) -> None:
        self.h_gamma = h_gamma

    def matvec(self, v: Tensor) -> Tensor:
        """(I − hγJ) v, J v by forward-mode AD at (t, y) (no graph)."""
        self.stats.n_jvp += 1
        return v - self.column(self.h_gamma, v) * self.field_jvp(self.y.detach(), v)[1]

    def solve(self, rhs: Tensor) -> Tensor:
        self.stats.n_linear_solves += 1
        tol = self.options.tolerance(rhs.dtype)
        with torch.no_grad():
            result = gmres(self.matvec, rhs.detach(), rtol=tol, restart=self.options.restart,
                           max_matvecs=self.options.max_linear)
        if not result.converged:
            raise NonConvergenceError(
                f"the Krylov solve of (I − hγJ)x = r did not reach its tolerance {tol:.2g} (relative "
                f"residual "
                f"{result.residual_norm / max(float(torch.linalg.vector_norm(rhs)), 1e-300):.2g} after "
                f"{result.matvecs} products): raise ImplicitOptions(max_linear=...) or restart", t=None)
        x = result.x
        if not torch.is_grad_enabled() or not (rhs.requires_grad or self.y.requires_grad or _has_graph(self)):
            return x
        explicit = rhs + self.column(self.h_gamma, x) * _jvp_with_graph(self.func, self.t, self.y, x)
        return _KrylovSolve.apply(explicit, x, self)


def _jacobian(function: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The Jacobians ∂f_b/∂x_b of the rows of function: [B, n] → [B, n], shape [B, n, n] (rows independent, as
    per-sample samples are; B = 1 for a whole state). By ``torch.func.jacrev`` of Σ_b f_b (its Jacobian is
    block diagonal: n reverse products for every row at once); inside ``torch.utils.checkpoint``, whose
    saved-tensor hooks torch.func refuses and where a reverse pass would start its recomputation, by n
    forward-mode products (column i of every row's Jacobian at once)."""
    try:
        return torch.func.jacrev(lambda z: function(z).sum(0))(x).permute(1, 0, 2)
    except RuntimeError as error:
        if "saved tensor hooks" not in str(error):
            raise
    columns = []
    for i in range(x.shape[1]):
        tangent = torch.zeros_like(x)
        tangent[:, i] = 1.0
        with _forward_mode():
            product = forward_ad.unpack_dual(function(forward_ad.make_dual(x, tangent))).tangent
        columns.append(torch.zeros_like(x) if product is None else product)
    return torch.stack(columns, dim=-1)


@contextlib.contextmanager
def _forward_mode():
    """A forward-AD level, without the deprecation warning torch's first forward-AD call emits (it scripts
    its decompositions)."""
    with warnings.catch_warnings(), forward_ad.dual_level():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        yield


def _has_graph(linearization: Linearization) -> bool:
    """Whether f itself uses tensors that require grad (parameters): one evaluation without y's graph."""
    cached = getattr(linearization, "_parameters_need_grad", None)
    if cached is None:
        with torch.enable_grad():
            cached = bool(linearization.func(linearization.t, linearization.y.detach()).requires_grad)
        linearization._parameters_need_grad = cached
    return cached


def _jvp_with_graph(func: Callable, t: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """J(y) v with a graph to y and to func's parameters (v held constant), by forward-mode AD (no reverse
    pass: safe inside ``torch.utils.checkpoint``)."""
    with torch.enable_grad(), _forward_mode():
        product = forward_ad.unpack_dual(func(t, forward_ad.make_dual(y, v.detach()))).tangent
    return torch.zeros_like(v) if product is None else product


class _KrylovSolve(torch.autograd.Function):
    """Forward: x* (GMRES's solution). Backward: λ = (I − hγJ)⁻ᵀ g by GMRES on vector-Jacobian products,
    fed to the graph of r + hγ J(y) x*, whose Jacobians in r, y and θ are those of the fixed point
    x = r + hγJx."""

    @staticmethod
    def forward(ctx, explicit: Tensor, solution: Tensor, linearization: KrylovLinearization) -> Tensor:
        ctx.linearization = linearization
        return solution.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        lin: KrylovLinearization = ctx.linearization
        with torch.enable_grad():
            z = lin.y.detach().requires_grad_(True)
            value = lin.func(lin.t, z)

        def transpose_matvec(v: Tensor) -> Tensor:
            lin.stats.n_jvp += 1
            (vjp,) = torch.autograd.grad(value, z, v, retain_graph=True, allow_unused=True)
            return v if vjp is None else v - lin.column(lin.h_gamma, v) * vjp

        tol = lin.options.tolerance(grad.dtype)
        result = gmres(transpose_matvec, grad, rtol=tol, restart=lin.options.restart,
                       max_matvecs=lin.options.max_linear)
        if not result.converged:
            raise NonConvergenceError(
                f"backward pass of a Krylov solve: (I − hγJ)ᵀλ = g not solved to {tol:.2g} after "
                f"{result.matvecs} products: raise ImplicitOptions(max_linear=...)")
        return result.x, None, None


def linearize(func: Callable, t: Tensor, y: Tensor, per_sample: bool, options: ImplicitOptions,
              stats: StiffStats) -> Linearization:
    """J at (t, y) as ``options.jacobian`` asks: "dense", "krylov", or "auto" (dense while one system has at
    most ``options.dense_size`` unknowns: a sample's under per-sample control, the whole state otherwise)."""
    size = y[0].numel() if per_sample else y.numel()
    dense = options.jacobian == "dense" or (options.jacobian == "auto" and size <= options.dense_size)
    kind = DenseLinearization if dense else KrylovLinearization
    return kind(func, t, y, per_sample, options, stats)
