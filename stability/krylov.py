"""Matrix-free restarted GMRES for the linear systems of implicit steps: A x = b with only x ↦ A x known.

GMRES(m) (Saad & Schultz 1986) minimises ‖b − A x‖₂ over x₀ + K_k(A, r₀); in exact arithmetic it converges in
at most n iterations, and for A = I − hJ with h‖J‖ < 1 the residual contracts by at least h‖J‖ per iteration.
The Krylov basis is orthogonalised by classical Gram–Schmidt applied twice (CGS2: as stable as modified
Gram–Schmidt, but two matrix-vector products per column instead of a Python loop over the basis).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor


class KrylovResult(NamedTuple):
    """Solution, final residual norm ‖b − A x‖₂, matrix-vector products used, whether the target was met."""

    x: Tensor
    residual_norm: float
    matvecs: int
    converged: bool


def gmres(matvec: Callable[[Tensor], Tensor], b: Tensor, *, rtol: float = 1e-8, restart: int = 20,
          max_matvecs: int = 100) -> KrylovResult:
    """Solve A x = b for x (any shape, like ``b``) to ‖b − A x‖₂ ≤ rtol·‖b‖₂, starting from x = 0.

    ``matvec`` must be linear; it is called at most ``max_matvecs`` times (plus one per restart for the true
    residual). Never raises on non-convergence: the caller decides (see ``converged``).
    """
    shape, n = b.shape, b.numel()
    restart = max(1, min(restart, n))
    b_flat = b.reshape(-1)
    target = max(rtol * float(torch.linalg.vector_norm(b_flat)), 0.0)
    x = torch.zeros_like(b_flat)
    matvecs = 0

    def apply(v: Tensor) -> Tensor:
        nonlocal matvecs
        matvecs += 1
        return matvec(v.view(shape)).reshape(-1)

    r = b_flat.clone()
    beta = float(torch.linalg.vector_norm(r))
    while True:
        if not math.isfinite(beta) or beta <= target or matvecs >= max_matvecs:
            return KrylovResult(x.view(shape), beta, matvecs, beta <= target)
        basis = torch.empty(restart + 1, n, dtype=b.dtype, device=b.device)
        basis[0] = r / beta
        hessenberg = [[0.0] * restart for _ in range(restart + 1)]
        cosines, sines = [0.0] * restart, [0.0] * restart
        g = [beta] + [0.0] * restart  # right-hand side β e₁ rotated along with H
        k, estimate = 0, beta
        while k < restart and matvecs < max_matvecs:
            w = apply(basis[k])
            active = basis[: k + 1]
            coefficients = active @ w
            w = w - coefficients @ active
            correction = active @ w  # second Gram–Schmidt pass (CGS2)
            w = w - correction @ active
            column = (coefficients + correction).tolist()
            norm_w = float(torch.linalg.vector_norm(w))
            column.append(norm_w)
            for i in range(k):  # previous Givens rotations
                column[i], column[i + 1] = (
                    cosines[i] * column[i] + sines[i] * column[i + 1],
                    -sines[i] * column[i] + cosines[i] * column[i + 1],
                )
            radius = math.hypot(column[k], column[k + 1])
            if radius == 0.0 or not math.isfinite(radius):
                break
            cosines[k], sines[k] = column[k] / radius, column[k + 1] / radius
            column[k], column[k + 1] = radius, 0.0
            g[k], g[k + 1] = cosines[k] * g[k], -sines[k] * g[k]
            for i in range(k + 1):
                hessenberg[i][k] = column[i]
            k += 1
            estimate = abs(g[k])
            if estimate <= target or norm_w <= 1e-300:
                break
            basis[k] = w / norm_w
        if k == 0:
            return KrylovResult(x.view(shape), beta, matvecs, False)
        # Back substitution for the upper-triangular k×k least-squares system.
        y = [0.0] * k
        for i in reversed(range(k)):
            y[i] = (g[i] - sum(hessenberg[i][j] * y[j] for j in range(i + 1, k))) / hessenberg[i][i]
        x = x + torch.tensor(y, dtype=b.dtype, device=b.device) @ basis[:k]
        r = b_flat - apply(x)  # the true residual: the recurrence can drift in finite precision
        beta = float(torch.linalg.vector_norm(r))
