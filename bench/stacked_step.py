"""The stacked explicit step against the sequential stage sums it replaces, on the tiny-MLP problem of
``bench.bench_solvers`` table (b) (dopri5, rtol = atol = 1e-6, t in [0, 50], no grad, one thread).

Three contenders in one process, interleaved in rotated order each round, each timed over ``inner`` solves:
the solve with the stacked step (``stability.runge_kutta._stacked_step``, the default for small no-grad CPU
states), the same solve with the sequential sums (``STACKED_MAX_NUMEL`` set below every state), and the
floor (the solve's NFE plain evaluations of f). CPU-time medians (``time.process_time``), ms per solve, and
each as a multiple of the floor. Both solves are checked equal (outputs and step sizes) first.

Run:  OMP_NUM_THREADS=1 python -m bench.stacked_step [--repeats 61] [--inner 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

import stability  # noqa: E402
from bench.fields import TinyMLPField  # noqa: E402
from stability import runge_kutta  # noqa: E402

OPTIONS = dict(method="dopri5", rtol=1e-6, atol=1e-6)
STACKED = runge_kutta.STACKED_MAX_NUMEL


def _solve(field, y0, t, stacked: bool):
    runge_kutta.STACKED_MAX_NUMEL = STACKED if stacked else -1
    return stability.solve(field, y0, t, **OPTIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=61)
    parser.add_argument("--inner", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    field = TinyMLPField()
    y0, t = torch.tensor([[1.0, 0.5]]), torch.tensor([0.0, 50.0])
    with torch.no_grad():
        stacked, sequential = _solve(field, y0, t, True), _solve(field, y0, t, False)
        if not (torch.equal(stacked.ys, sequential.ys)
                and stacked.stats.step_sizes == sequential.stats.step_sizes):
            raise SystemExit("the stacked and the sequential solve differ")
        nfe = stacked.stats.nfe
        contenders = {
            "stacked step": lambda: _solve(field, y0, t, True),
            "sequential sums": lambda: _solve(field, y0, t, False),
            f"floor ({nfe} evaluations)": lambda: [field(t[0], y0) for _ in range(nfe)],
        }
        names = list(contenders)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.repeats):
            for name in names[round_ % 3:] + names[:round_ % 3]:
                start = time.process_time()
                for _ in range(args.inner):
                    contenders[name]()
                samples[name].append((time.process_time() - start) / args.inner)
    runge_kutta.STACKED_MAX_NUMEL = STACKED
    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = medians[names[2]]
    print(f"tiny MLP, dopri5 1e-6, {stacked.stats.n_accepted} steps, NFE {nfe}; CPU-time medians of "
          f"{args.repeats} interleaved rounds of {args.inner} solves")
    for name in names:
        print(f"{name:28s} {1e3 * medians[name]:8.3f} ms  {medians[name] / floor:.3f}x floor")
    print(f"stacked / sequential: {medians[names[0]] / medians[names[1]]:.3f}")


if __name__ == "__main__":
    main()
