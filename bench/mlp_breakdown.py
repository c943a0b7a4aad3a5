"""Where the tiny-MLP eager solve's time goes beyond its floor (the problem of table (b) of
``bench.bench_solvers``: dopri5, rtol = atol = 1e-6, t in [0, 50], no grad).

Contenders, interleaved, each ``inner`` times a round (so every one is timed warm):

- solve: ``stability.solve`` as the benchmark calls it;
- step loop: the same solve's loop alone (``integrate.run`` on a stepper built outside the timing);
- tensor work: the solve's own steps written as a bare loop: its f evaluations and the step's tensor
  operations (time tensors, stage sums, error estimate, error ratio), nothing else;
- floor: the solve's NFE evaluations of f (and the NFE − 2 of its step loop: f0 and the first step's probe
  are made by the setup);
- the step's tensor operations alone, one kind at a time, with the solve's step sizes: their shares.

So, in multiples of the floor: setup = solve − step loop − its 2 evaluations; the step loop's Python
(control flow, controller, the checks of each evaluation, statistics, outputs) = step loop − tensor work;
the tensor operations in the solve = tensor work − the floor of its evaluations, split in the shares the
kinds take when timed alone (alone they run faster than between f evaluations: those times are shown too).
CPU-time medians (``time.process_time``), µs per solve.

Run:  OMP_NUM_THREADS=1 python -m bench.mlp_breakdown [--repeats 21] [--inner 10]
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
from bench.timing import interleaved_samples, print_table  # noqa: E402
from stability.checks import check_times  # noqa: E402
from stability.integrate import make_stepper, run  # noqa: E402
from stability.methods import DOPRI5  # noqa: E402
from stability.options import as_options  # noqa: E402
from stability.step_control import SteppedErrorRatio  # noqa: E402

OPTIONS = dict(method="dopri5", rtol=1e-6, atol=1e-6)
STAGE_TIMES = sorted({c for c, _ in DOPRI5.stage_plan})  # the distinct new times of a step: 5 for DOPRI5


def stage_sums(y, stages, h):
    """y + h Σ_j a_ij k_j for every stage after the first (the FSAL method's last one is y_{n+1})."""
    for _, row in DOPRI5.stage_plan:
        j, w = row[0]
        out = torch.add(y, stages[j], alpha=h * w)
        for j, w in row[1:]:
            out.add_(stages[j], alpha=h * w)
    return out


def error_estimate(stages, h):
    (j, w), *rest = DOPRI5.error_plan
    error = stages[j] * (h * w)
    for j, w in rest:
        error.add_(stages[j], alpha=h * w)
    return error


def breakdown(repeats: int, inner: int = 10) -> None:
    field = TinyMLPField()
    y0 = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([0.0, 50.0])
    options, times = as_options(None, OPTIONS), check_times(t)
    with torch.no_grad():
        solved = stability.solve(field, y0, t, **OPTIONS)
    stats = solved.stats
    steps = list(zip(stats.step_times, stats.step_sizes))  # accepted steps (this solve rejects none)
    fixed = [torch.randn(1, 2, generator=torch.Generator().manual_seed(i)) for i in range(DOPRI5.stages)]
    built: list = []

    def build():
        built[:] = [make_stepper(field, y0, times, options) for _ in range(inner)]

    def tensor_work():
        for stepper in built:
            y, first, ratio = stepper.solver.y, stepper.solver._first_stage, SteppedErrorRatio()
            for t0, h in steps:
                stages = [first]
                for c, row in DOPRI5.stage_plan:
                    j, w = row[0]
                    stage_input = torch.add(y, stages[j], alpha=h * w)
                    for j, w in row[1:]:
                        stage_input.add_(stages[j], alpha=h * w)
                    stages.append(field(torch.full((), t0 + c * h, dtype=y.dtype, device=y.device),
                                        stage_input))
                ratio(error_estimate(stages, h), y, stage_input, 1e-6, 1e-6)
                y, first = stage_input, stages[-1]

    def time_tensors():
        for t0, h in steps:
            for c in STAGE_TIMES:
                torch.full((), t0 + c * h, dtype=y0.dtype, device=y0.device)

    y_steps = [y0 + 0.01 * k for k in range(len(steps) + 1)]

    def error_ratio():
        ratio = SteppedErrorRatio()
        for k in range(len(steps)):
            ratio(fixed[0], y_steps[k], y_steps[k + 1], 1e-6, 1e-6)

    def evaluations(n: int):
        def evaluate():
            for _ in range(n):
                field(t[0], y0)
        return evaluate

    def times_inner(work):
        def runs():
            for _ in range(inner):
                work()
        return runs

    kinds = {"time tensors": time_tensors,
             "stage sums": lambda: [stage_sums(y0, fixed, h) for _, h in steps],
             "error estimate": lambda: [error_estimate(fixed, h) for _, h in steps],
             "error ratio": error_ratio}
    contenders = {  # name: (prepare, untimed; work, timed)
        "solve": (None, times_inner(lambda: stability.solve(field, y0, t, **OPTIONS))),
        "step loop": (build, lambda: [run(stepper) for stepper in built]),
        "tensor work": (build, tensor_work),
        "floor": (None, times_inner(evaluations(stats.nfe))),
        "floor of the steps": (None, times_inner(evaluations(stats.nfe - 2))),
        **{name: (None, times_inner(work)) for name, work in kinds.items()},
    }

    def measure(contender) -> float:
        prepare, work = contender
        if prepare is not None:
            prepare()
        start = time.process_time()
        work()
        return (time.process_time() - start) / inner

    with torch.no_grad():
        for contender in contenders.values():  # warm-up
            measure(contender)
        samples = interleaved_samples(contenders, repeats, warmup=0, measure=measure)
    median = {name: statistics.median(values) for name, values in samples.items()}
    floor, floor_steps = median["floor"], median["floor of the steps"]
    in_solve = median["tensor work"] - floor_steps
    alone_total = sum(median[name] for name in kinds)
    rows = [("solve", "", f"{1e6 * median['solve']:.0f}", f"{median['solve'] / floor:.3f}", ""),
            (f"floor: {stats.nfe} evaluations of f", "", f"{1e6 * floor:.0f}", "1.000", ""),
            ("setup (less its 2 evaluations)", "",
             *_cells(median["solve"] - median["step loop"] - (floor - floor_steps), floor), ""),
            ("step loop's Python", "", *_cells(median["step loop"] - median["tensor work"], floor), "")]
    counts = {"time tensors": len(STAGE_TIMES), "stage sums": sum(len(row) for _, row in DOPRI5.stage_plan),
              "error estimate": len(DOPRI5.error_plan), "error ratio": 6}
    for name in kinds:
        share = in_solve * median[name] / alone_total
        rows.append((f"  {name}", counts[name] * len(steps), *_cells(share, floor),
                     f"{1e6 * median[name]:.0f}"))
    rows.append(("tensor operations of the steps", sum(counts.values()) * len(steps),
                 *_cells(in_solve, floor), f"{1e6 * alone_total:.0f}"))
    print_table(f"(b') where the eager tiny-MLP solve's time goes ({stats.n_accepted} + {stats.n_rejected} "
                f"steps, NFE {stats.nfe}): CPU µs per solve, medians of {repeats} interleaved rounds of "
                f"{inner} runs each; the tensor operations in the solve split in the shares they take alone",
                rows, ("part", "torch ops", "cpu_us", "x_floor", "alone_us"))


def _cells(seconds: float, floor: float) -> tuple[str, str]:
    return f"{1e6 * seconds:.0f}", f"{seconds / floor:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--inner", type=int, default=10, help="runs of each contender a round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    breakdown(args.repeats, args.inner)


if __name__ == "__main__":
    main()
