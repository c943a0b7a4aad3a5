"""Empirical verification of the stability bounds of deep networks read as ODE schemes.

Theorem 3.1 (Euler): a perturbation ε of the input of y_{n+1} = y_n + h f(y_n), f K-Lipschitz, grows at
most as |e_n| ≤ (1 + hK)^n |ε| ≤ e^{(t_n − t_0)K} |ε|; Theorem 3.2 gives the same form for Runge–Kutta schemes
through the Lipschitz constant of their increment function. This package computes K — a certified upper
bound (``lipschitz_upper``: products of exact/certified layer norms on the actual input shape) and an
empirical lower bound (``lipschitz_lower``: the best secant ratio found, a value K is at least) — the
per-scheme bounds (``bounds``), measures |e_n| on the actual scheme or network (``verify``: y0 and y0 + ε
through the same steps, 2-norm per sample) and reports tightness and violations as figures and CSV
(``report``; the command line is ``python -m experiments.bounds``). What a certificate assumes is stated,
never implied: layers it cannot bound (GroupNorm/LayerNorm by default, training-mode BatchNorm, adaptive step
selection) are refused.
"""

from proofs_check import networks, pooling  # noqa: F401  (register the rules for nets blocks, pooling)
from proofs_check.bounds import (
    amplification_bound,
    exponential_envelope,
    increment_lipschitz,
    revnet_bound,
    revnet_step_matrix,
    stage_lipschitz,
    step_factor,
)
from proofs_check.lipschitz import (
    LayerBound,
    LipschitzCertificate,
    lipschitz_upper,
    register_lipschitz_rule,
)
from proofs_check.lower_bounds import LowerBound, jacobian_norm, lipschitz_lower
from proofs_check.operator_norms import NotCertifiableError, OperatorNorm, conv2d_norm, linear_norm
from proofs_check.verify import (
    AdaptiveVerification,
    BoundViolationError,
    BoundViolationWarning,
    CertifiedStep,
    Verification,
    solver_steps,
    verify_adaptive,
    verify_coupled,
    verify_revnet,
    verify_scheme,
    verify_steps,
)

__all__ = [
    "AdaptiveVerification",
    "BoundViolationError",
    "BoundViolationWarning",
    "LayerBound",
    "LipschitzCertificate",
    "LowerBound",
    "NotCertifiableError",
    "OperatorNorm",
    "CertifiedStep",
    "Verification",
    "amplification_bound",
    "conv2d_norm",
    "exponential_envelope",
    "increment_lipschitz",
    "jacobian_norm",
    "linear_norm",
    "lipschitz_lower",
    "lipschitz_upper",
    "register_lipschitz_rule",
    "revnet_bound",
    "revnet_step_matrix",
    "solver_steps",
    "stage_lipschitz",
    "step_factor",
    "verify_adaptive",
    "verify_coupled",
    "verify_revnet",
    "verify_scheme",
    "verify_steps",
]
