"""Gradient benchmark: backprop, checkpointed backprop and the adjoint method (ours) vs torchdiffeq's odeint
and odeint_adjoint, side by side in one run; then per-sample vs shared step control.

(a) The conv field of bench_solvers (GroupNorm-ReLU-conv3x3 twice, 64 channels, 7×7, float32), dopri5 at
    rtol = atol = 1e-3 (and 1e-5: more steps) on t ∈ [0, 1], loss L = <w, y(1)>. Per contender:
    forward+backward time (interleaved medians), peak tensor memory (stability.peak_memory: torch's own
    allocation events), NFE forward/backward (the field counts its calls) and the relative L2 error of
    dL/dy0 against a tight reference on the first ``--reference-samples`` samples (GroupNorm keeps samples
    independent, so their exact input gradients do not depend on the rest of the batch): float64 adjoint
    (mixed norm) at rtol = atol = 1e-7. On this ReLU field the gradient of the discretisation converges
    slowly with the tolerance (the controller watches y, not its Jacobian, whose kinks cost RK its order),
    while the error-controlled adjoint resolves them; the reference's uncertainty is printed as its distance
    to float64 checkpointed backprop at 1e-9.
(b) The same field at the first tolerance, no grad: shared step control (one step size for the batch;
    torchdiffeq's only mode) vs per-sample step control; time and NFE (per-sample: mean over samples), for
    the batch as drawn and for the batch with per-sample scales 0.1..10 (unequal difficulty).

Run:  bash bench/setup.sh && OMP_WAIT_POLICY=PASSIVE python -m bench.bench_gradients [--batch 128]
      [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402
import torchdiffeq  # noqa: E402

import stability  # noqa: E402
from bench.fields import ConvField  # noqa: E402
from bench.timing import interleaved_medians, print_table  # noqa: E402

T = torch.tensor([0.0, 1.0])


def make_problem(batch: int):
    field = ConvField()
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(batch, 64, 7, 7, generator=g)
    weights = torch.randn(batch, 64, 7, 7, generator=g) / (64 * 49) ** 0.5
    return field, y0, weights


def contenders(field: ConvField, y0: torch.Tensor, weights: torch.Tensor, tol: float):
    """Each runs forward + backward and returns dL/dy0; the field's counter gives the NFE."""
    TOL = dict(rtol=tol, atol=tol)  # noqa: N806

    def run(solve_ys):
        def go():
            y = y0.clone().requires_grad_()
            field.zero_grad(set_to_none=True)
            ys = solve_ys(y)
            field.forward_nfe = field.nfe
            loss = (ys[-1] * weights).sum()
            loss.backward()
            return y.grad

        return go

    return {
        "backprop": run(lambda y: stability.odeint(field, y, T, method="dopri5", **TOL)),
        "checkpoint": run(
            lambda y: stability.odeint(field, y, T, method="dopri5", gradient="checkpoint", **TOL)
        ),
        "adjoint": run(lambda y: stability.odeint(field, y, T, method="dopri5", gradient="adjoint", **TOL)),
        "adjoint(seminorm)": run(
            lambda y: stability.odeint(
                field, y, T, method="dopri5", gradient="adjoint", adjoint_norm="seminorm", **TOL
            )
        ),
        "tdq backprop": run(lambda y: torchdiffeq.odeint(field, y, T, method="dopri5", **TOL)),
        "tdq adjoint": run(lambda y: torchdiffeq.odeint_adjoint(field, y, T, method="dopri5", **TOL)),
    }


def reference_gradient(field: ConvField, y0: torch.Tensor, weights: torch.Tensor, samples: int, tol: float,
                       gradient: str):
    field64 = copy.deepcopy(field).double()
    y = y0[:samples].double().requires_grad_()
    ys = stability.odeint(field64, y, T.double(), method="dopri5", rtol=tol, atol=tol, gradient=gradient)
    (ys[-1] * weights[:samples].double()).sum().backward()
    return y.grad, field64.nfe


def relative_error(gradient: torch.Tensor, reference: torch.Tensor) -> float:
    samples = reference.shape[0]
    difference = gradient[:samples].double() - reference
    return float(torch.linalg.vector_norm(difference) / torch.linalg.vector_norm(reference))


def gradient_benchmark(batch: int, repeats: int, reference_samples: int, tolerances: list[float]) -> None:
    field, y0, weights = make_problem(batch)
    reference, reference_nfe = reference_gradient(field, y0, weights, reference_samples, 1e-7, "adjoint")
    check, check_nfe = reference_gradient(field, y0, weights, reference_samples, 1e-9, "checkpoint")
    distance = relative_error(check, reference)
    print(f"reference: float64 dopri5 adjoint rtol=atol=1e-7 on {reference_samples} samples "
          f"(nfe {reference_nfe}); distance to checkpointed backprop at 1e-9 (nfe {check_nfe}): "
          f"{distance:.2e}",
          flush=True)
    for tol in tolerances:
        gradient_table(field, y0, weights, reference, tol, repeats)


def gradient_table(field, y0, weights, reference, tol: float, repeats: int) -> None:
    runs = contenders(field, y0, weights, tol)
    rows_data = {}
    for name, go in runs.items():
        field.nfe = 0
        gradient = go()
        nfe_total = field.nfe
        nfe_forward = field.forward_nfe
        field.nfe = 0
        _, peak = stability.peak_memory(go)
        rows_data[name] = dict(nfe_f=nfe_forward, nfe_b=nfe_total - nfe_forward, peak=peak,
                               error=relative_error(gradient, reference))
    times = interleaved_medians(runs, repeats=repeats)
    base_time, base_peak = times["tdq adjoint"], rows_data["tdq adjoint"]["peak"]
    rows = []
    for name, data in rows_data.items():
        rows.append((name, data["nfe_f"], data["nfe_b"], f"{times[name]:.2f}", f"{data['peak'] / 2**20:.1f}",
                     f"{100 * data['error']:.2f}%", f"{times[name] / base_time:.2f}",
                     f"{data['peak'] / base_peak:.2f}"))
    print_table(f"(a) conv field, batch {y0.shape[0]}, 64ch 7x7, float32, dopri5 rtol=atol={tol:g}, "
                f"t in [0, 1]: forward+backward (median of {repeats})",
                rows, ("method", "nfe_fwd", "nfe_bwd", "seconds", "peak_MiB", "dL/dy0_err", "time/tdq_adj",
                       "mem/tdq_adj"))


def per_sample_benchmark(batch: int, repeats: int, tol: float) -> None:
    field, y0, _ = make_problem(batch)
    # Mixed scales: GroupNorm makes f scale-free, so large states change relatively slowly (easy samples).
    scales = torch.logspace(-1, 1, batch).view(batch, 1, 1, 1)
    options = dict(method="dopri5", rtol=tol, atol=tol)
    rows = []
    for label, states in (("same scale", y0), ("scales 0.1..10", y0 * scales)):
        nfe = {}

        def shared(states=states, nfe=nfe):
            nfe["shared"] = stability.solve(field, states, T, **options).stats.nfe

        def per_sample(states=states, nfe=nfe):
            sol = stability.solve(field, states, T, per_sample=True, **options)
            nfe["per-sample"] = sum(sol.nfe) / len(sol.nfe)
            nfe["per-sample max"] = max(sol.nfe)

        def peer(states=states, nfe=nfe):
            field.nfe = 0
            torchdiffeq.odeint(field, states, T, **options)
            nfe["tdq shared"] = field.nfe

        with torch.no_grad():
            times = interleaved_medians({"shared": shared, "per-sample": per_sample, "tdq shared": peer},
                                        repeats=repeats)
        rows += [
            (label, "shared", nfe["shared"], f"{times['shared']:.2f}", "1.00"),
            (label, "per-sample", f"mean {nfe['per-sample']:.1f}, max {nfe['per-sample max']}",
             f"{times['per-sample']:.2f}", f"{times['per-sample'] / times['shared']:.2f}"),
            (label, "tdq shared", nfe["tdq shared"], f"{times['tdq shared']:.2f}",
             f"{times['tdq shared'] / times['shared']:.2f}"),
        ]
    print_table(f"(b) step control, conv field batch {batch}, dopri5 rtol=atol={tol:g}, no grad "
                f"(median of {repeats})", rows, ("batch", "mode", "nfe", "seconds", "time/shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-samples", type=int, default=16)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-3, 1e-5])
    parser.add_argument("--skip-gradients", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torchdiffeq {getattr(torchdiffeq, '__version__', '?')}, "
          f"threads {torch.get_num_threads()}")
    if not args.skip_gradients:
        gradient_benchmark(args.batch, args.repeats, args.reference_samples, args.tolerances)
    per_sample_benchmark(args.batch, args.repeats, args.tolerances[0])


if __name__ == "__main__":
    main()
