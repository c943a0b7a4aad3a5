"""The adaptive stiff methods (rodas4, kvaerno5) against scipy's Radau and BDF at equal tolerances.

Problems (float64, shared step control, scipy given the analytic Jacobian):
- Robertson's chemical kinetics on [0, 40] (outputs at 0.4, 4, 40), y2 solved as 1e4·y2 so that one
  atol = 1e-6 is an absolute tolerance of 1e-6 on y1 and y3 and 1e-10 on y2 (errors in original units);
- Van der Pol with μ = 1e3 on [0, 3000] from (2, 0) (outputs at 1000, 2000, 3000), atol = rtol.
At rtol 1e-3 and 1e-6. Error: the max-norm error over the outputs against scipy's Radau at rtol = 1e-12
(atol 1e-14 Robertson, 1e-12 Van der Pol), relative to max(1, ‖y_ref‖∞), and at the last output alone (a
step end: no interpolation). Work: accepted steps, f evaluations, Jacobians (ours: one ``torch.func.jacrev``
each; scipy: njev), LU factorisations, the steps rejected by a failed Newton iteration (kvaerno5), and
f+J = nfe + njev; the ratios are ours over Radau's and BDF's f+J
and steps.

Run:  python -m bench.stiff_suite        (``--json PATH`` also writes the rows)
      python -m bench.stiff_suite --gradients   (gradients against central differences, float64)
      python -m bench.stiff_suite --conv        (a conv field solved matrix-free, against dopri5)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

import stability
from storage.atomic import atomic_write_text

TOLERANCES = (1e-3, 1e-6)
METHODS = ("rodas4", "kvaerno5")
MU = 1e3
SCALE = np.array([1.0, 1e4, 1.0])  # Robertson's y2 is solved as 1e4·y2


def _stack(parts, like):
    """``torch.stack`` for tensors, ``numpy.stack`` for arrays, along the last axis: one field definition
    serves our solvers (torch) and scipy's (numpy, without a tensor round trip per evaluation)."""
    return torch.stack(parts, dim=-1) if isinstance(like, torch.Tensor) else np.stack(parts, axis=-1)


def robertson(t, y):
    y1, y2, y3 = y[..., 0], y[..., 1] * 1e-4, y[..., 2]
    return _stack([-0.04 * y1 + 1e4 * y2 * y3, 1e4 * (0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 * y2),
                   3e7 * y2 * y2], y)


def robertson_jacobian(t, y):
    y2, y3 = y[1] * 1e-4, y[2]
    return np.array([[-0.04, 1e4 * y3 * 1e-4, 1e4 * y2],
                     [1e4 * 0.04, 1e4 * (-1e4 * y3 - 6e7 * y2) * 1e-4, 1e4 * (-1e4 * y2)],
                     [0.0, 6e7 * y2 * 1e-4, 0.0]])


def van_der_pol(t, y):
    x, v = y[..., 0], y[..., 1]
    return _stack([v, MU * (1 - x * x) * v - x], y)


def van_der_pol_jacobian(t, y):
    return np.array([[0.0, 1.0], [-2 * MU * y[0] * y[1] - 1, MU * (1 - y[0] ** 2)]])


# name: (field, its Jacobian for scipy, y0, output times, atol (None: = rtol), reference atol, unscale)
PROBLEMS = {
    "robertson": (robertson, robertson_jacobian, [1.0, 0.0, 0.0], [0.0, 0.4, 4.0, 40.0], 1e-6, 1e-14, SCALE),
    "van_der_pol_1e3": (van_der_pol, van_der_pol_jacobian, [2.0, 0.0], [0.0, 1000.0, 2000.0, 3000.0], None,
                        1e-12, np.ones(2)),
}


@dataclass
class Row:
    problem: str
    rtol: float
    method: str
    steps: int
    rejected: int
    nfe: int
    njev: int
    nlu: int
    newton_failures: int
    error: float
    error_end: float
    seconds: float
    radau: dict
    bdf: dict

    @property
    def work(self) -> int:
        return self.nfe + self.njev

    def ratio(self, peer: dict, what: str) -> float:
        ours = self.work if what == "work" else self.steps
        return ours / (peer["nfev"] + peer["njev"] if what == "work" else peer["steps"])


def _numpy(func, shape):
    """``func`` (a problem's field, array-generic) on scipy's flat float64 arrays."""
    def f(t, y):
        return func(t, y.reshape(shape)).reshape(-1)
    return f


def _error(ys: np.ndarray, reference: np.ndarray, unscale: np.ndarray) -> float:
    """Max-norm error over the outputs in the problem's original units, relative to max(1, ‖y_ref‖∞)."""
    ys, reference = ys / unscale, reference / unscale
    return float(np.abs(ys - reference).max()) / max(1.0, float(np.abs(reference).max()))


def _errors(ys: np.ndarray, reference: np.ndarray, unscale: np.ndarray) -> tuple[float, float]:
    """(error over every output, error at the last one): the last output is the end of a step, the others
    come from the dense output."""
    return _error(ys, reference, unscale), _error(ys[-1:], reference[-1:], unscale)


REFERENCE_RTOL = 1e-12


def reference(problem: str, rtol: float = REFERENCE_RTOL) -> np.ndarray:
    """scipy's Radau at ``rtol`` (the suite's: 1e-12, with the problem's reference atol; a looser ``rtol``
    scales that atol alike) at the output times after the first."""
    func, _, y0, times, _, ref_atol, _ = PROBLEMS[problem]
    sol = solve_ivp(_numpy(func, (len(y0),)), (times[0], times[-1]), y0, method="Radau", t_eval=times[1:],
                    rtol=rtol, atol=ref_atol * rtol / REFERENCE_RTOL)
    return sol.y.T


def scipy_row(problem: str, rtol: float, method: str, ref: np.ndarray) -> dict:
    """scipy's ``method`` at our tolerances: accepted steps, nfev, njev, nlu, and the error of its dense
    output at the output times (as ours: outputs never shorten a step)."""
    func, jacobian, y0, times, atol, _, unscale = PROBLEMS[problem]
    atol = rtol if atol is None else atol
    sol = solve_ivp(_numpy(func, (len(y0),)), (times[0], times[-1]), y0, method=method, rtol=rtol, atol=atol,
                    jac=jacobian, dense_output=True)
    error, error_end = _errors(sol.sol(times[1:]).T, ref, unscale)
    return {"steps": int(sol.t.size - 1), "nfev": int(sol.nfev), "njev": int(sol.njev), "nlu": int(sol.nlu),
            "error": error, "error_end": error_end}


def run(problem: str, rtol: float, method: str, ref: np.ndarray | None = None) -> Row:
    func, _, y0, times, atol, _, unscale = PROBLEMS[problem]
    atol = rtol if atol is None else atol
    ref = reference(problem) if ref is None else ref
    start = time.perf_counter()
    with torch.no_grad():
        sol = stability.solve(func, torch.tensor(y0, dtype=torch.float64), times, method=method, rtol=rtol,
                              atol=atol, max_steps=10**6)
    seconds = time.perf_counter() - start
    stats = sol.stats
    return Row(problem, rtol, method, stats.n_accepted, stats.n_rejected, stats.nfe, stats.n_jacobians,
               stats.n_factorizations, stats.newton_failures, *_errors(sol.ys[1:].numpy(), ref, unscale),
               seconds, scipy_row(problem, rtol, "Radau", ref), scipy_row(problem, rtol, "BDF", ref))


GRADIENT_MU = 50.0


def _gradient_loss(method: str, mu: torch.Tensor, y0: torch.Tensor, **options) -> torch.Tensor:
    """A stiff, non-autonomous Van der Pol (μ = 50, forcing 0.1 cos t) from y0 on [0, 0.5]: Σ w·y at
    t = 0.25 and 0.5, w = (0.3, −0.01)."""
    def field(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x + 0.1 * torch.cos(t)], dim=-1)

    y = y0[None] if options.get("per_sample") else y0
    ys = stability.solve(field, y, [0.0, 0.25, 0.5], method=method, **options).ys
    return (ys[1:] * torch.tensor([0.3, -0.01], dtype=torch.float64)).sum()


def gradient_error(method: str, **options) -> float:
    """Max relative difference between the gradient in (μ, y0[0]) of ``_gradient_loss`` (float64) and central
    differences of the same solve (step 1e-6 relative)."""
    mu = torch.tensor(GRADIENT_MU, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    grad_mu, grad_y0 = torch.autograd.grad(_gradient_loss(method, mu, y0, **options), (mu, y0))
    errors = []
    with torch.no_grad():
        for parameter, index, analytic in ((mu, (), grad_mu), (y0, 0, grad_y0[0])):
            h = 1e-6 * max(1.0, abs(float(parameter[index])))
            parameter[index] += h
            plus = _gradient_loss(method, mu, y0, **options)
            parameter[index] -= 2 * h
            minus = _gradient_loss(method, mu, y0, **options)
            parameter[index] += h
            numeric = float((plus - minus) / (2 * h))
            errors.append(abs(float(analytic) - numeric) / abs(numeric))
    return max(errors)


# (label, options) of the gradient table: every gradient mode the stiff methods accept, both linear algebras.
GRADIENT_CASES = [
    ("fixed h=0.125, backprop, dense", dict(step_size=0.125)),
    ("fixed h=0.125, checkpoint, dense, per-sample", dict(step_size=0.125, gradient="checkpoint",
                                                         per_sample=True)),
    ("fixed h=0.125, backprop, krylov", dict(step_size=0.125,
                                             implicit=stability.ImplicitOptions(jacobian="krylov"))),
    ("adaptive rtol=1e-9, backprop, dense", dict(rtol=1e-9, atol=1e-9)),
    ("adaptive rtol=1e-9, checkpoint, dense", dict(rtol=1e-9, atol=1e-9, gradient="checkpoint")),
]


def gradients() -> None:
    print(f"{'case':>46} {'method':>9} {'max rel. diff. from central differences':>40}")
    for label, options in GRADIENT_CASES:
        for method in METHODS:
            print(f"{label:>46} {method:>9} {gradient_error(method, **options):>40.1e}", flush=True)


def conv_rows() -> None:
    """The conv field of ``tests.problems.damped_conv_problem`` (float32, rtol 1e-3, atol 1e-4): each stiff
    method under shared and per-sample control with Krylov solves on double-backward products, against dopri5
    at the same tolerances and the float64 dopri5 reference at 1e-8."""
    from tests.problems import damped_conv_problem

    field, y0, times = damped_conv_problem()
    options = dict(rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        reference_ys = stability.solve(field.double(), y0.double(), times, method="dopri5", rtol=1e-8,
                                       atol=1e-8).ys
        explicit = stability.solve(field.float(), y0, times, method="dopri5", **options).stats
    size = float(reference_ys.abs().max())
    print(f"dopri5 at the same tolerances: {explicit.n_accepted} steps ({explicit.n_rejected} rejected), "
          f"nfe {explicit.nfe}")
    print(f"{'method':>9} {'control':>10} {'steps':>6} {'rej':>4} {'Jacobians':>9} {'J·v':>6} "
          f"{'error / max|y|':>14} {'seconds':>8}")
    for method in METHODS:
        for per_sample in (False, True):
            start = time.perf_counter()
            with torch.no_grad():
                sol = stability.solve(field, y0, times, method=method, per_sample=per_sample,
                                      implicit=stability.ImplicitOptions(jvp="reverse"), **options)
            seconds = time.perf_counter() - start
            stats = sol.stats[0] if per_sample else sol.stats  # per sample: sample 0
            error = float((sol.ys.double() - reference_ys).abs().max()) / size
            print(f"{method:>9} {'per-sample' if per_sample else 'shared':>10} {stats.n_accepted:>6} "
                  f"{stats.n_rejected:>4} {stats.n_jacobians:>9} {stats.n_jvp:>6} {error:>14.1e} "
                  f"{seconds:>8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--gradients", action="store_true",
                        help="instead: gradients against central differences in float64")
    parser.add_argument("--conv", action="store_true",
                        help="instead: the conv field solved matrix-free, against dopri5")
    args = parser.parse_args()
    if args.gradients:
        gradients()
        return
    if args.conv:
        conv_rows()
        return
    rows = []
    print(f"{'problem':>16} {'rtol':>6} {'method':>9} {'steps':>6} {'rej':>4} {'nfe':>6} {'njev':>5} "
          f"{'nlu':>5} {'Newton fail.':>12} {'f+J':>6} {'error':>8} {'at end':>8} | {'Radau steps':>11} "
          f"{'f+J':>6} {'error':>8} "
          f"{'at end':>8} | {'BDF steps':>9} {'f+J':>6} {'error':>8} {'at end':>8} | {'f+J/Radau':>9} "
          f"{'f+J/BDF':>7} {'steps/Radau':>11} {'steps/BDF':>9}")
    for problem in PROBLEMS:
        ref = reference(problem)
        for rtol in TOLERANCES:
            for method in METHODS:
                r = run(problem, rtol, method, ref)
                rows.append(r)
                radau, bdf = r.radau, r.bdf
                print(f"{r.problem:>16} {r.rtol:>6.0e} {r.method:>9} {r.steps:>6} {r.rejected:>4} {r.nfe:>6} "
                      f"{r.njev:>5} {r.nlu:>5} {r.newton_failures:>12} {r.work:>6} {r.error:>8.1e} "
                      f"{r.error_end:>8.1e} | "
                      f"{radau['steps']:>11} {radau['nfev'] + radau['njev']:>6} {radau['error']:>8.1e} "
                      f"{radau['error_end']:>8.1e} | {bdf['steps']:>9} {bdf['nfev'] + bdf['njev']:>6} "
                      f"{bdf['error']:>8.1e} {bdf['error_end']:>8.1e} | {r.ratio(radau, 'work'):>9.2f} "
                      f"{r.ratio(bdf, 'work'):>7.2f} {r.ratio(radau, 'steps'):>11.2f} "
                      f"{r.ratio(bdf, 'steps'):>9.2f}", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps([asdict(r) | {"work": r.work} for r in rows], indent=1))

if __name__ == "__main__":
    main()
