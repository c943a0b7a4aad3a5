"""Where the tiny-MLP eager solve's time goes, beyond its floor (table (b) of ``bench.bench_solvers``).

The solve (dopri5, rtol = atol = 1e-6, t in [0, 50], no grad) is timed beside its floor (its own NFE plain
evaluations of f in one window) and beside replays of each part of the solver's own work, alone, with the
solve's recorded step sizes and step times and the same tensor operations in the same number:

- time tensors: the 0-d tensor of t that func receives, one per distinct stage time (5 a DOPRI5 step);
- stage sums: y + h Σ_j a_ij k_j for stages 2..7 (one ``torch.add`` and the rest ``add_`` per sum);
- error estimate: h Σ_j e_j k_j (one product, then ``add_``);
- error ratio: the mixed RMS ratio of the step (``SteppedErrorRatio``, its Python included);
- setup: options, output times, the solver's construction with its checks and first-step formula, and the
  solution's assembly — less the two evaluations of f it makes (they are in the floor's NFE).

What remains, solve − floor − parts, is the step loop's Python: the loop and the controller, the checks of
each evaluation (``evaluate_checked``), the statistics, the dense-output bookkeeping. The timings are CPU-time
medians (``time.process_time``) of interleaved rounds, in µs per solve; each contender runs ``inner`` times
a round, so every part is timed warm, as inside a solve (table (b) times one solve a round, which also pays
the first evaluations after another contender). "x_floor" is a part's time over the floor's: the parts and
the remainder add up to the solve's x_floor − 1.

Run:  OMP_NUM_THREADS=1 python -m bench.mlp_breakdown [--repeats 21] [--inner 10]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

import stability  # noqa: E402
from bench.fields import TinyMLPField  # noqa: E402
from bench.timing import interleaved_medians, print_table  # noqa: E402
from stability.checks import check_times  # noqa: E402
from stability.integrate import make_stepper, solution  # noqa: E402
from stability.methods import DOPRI5  # noqa: E402
from stability.options import as_options  # noqa: E402
from stability.step_control import SteppedErrorRatio  # noqa: E402

OPTIONS = dict(method="dopri5", rtol=1e-6, atol=1e-6)


def _repeated(run, inner: int):
    def runs():
        for _ in range(inner):
            run()
    return runs


def breakdown(repeats: int, inner: int = 10) -> None:
    field = TinyMLPField()
    y0 = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([0.0, 50.0])
    with torch.no_grad():
        solved = stability.solve(field, y0, t, **OPTIONS)
    stats = solved.stats
    steps = list(zip(stats.step_times, stats.step_sizes))  # accepted steps (this solve rejects none)
    stages = [torch.randn(1, 2, generator=torch.Generator().manual_seed(i)) for i in range(DOPRI5.stages)]
    stage_times = sorted({c for c, _ in DOPRI5.stage_plan})  # distinct new times a step: 5 for DOPRI5

    def solve():
        stability.solve(field, y0, t, **OPTIONS)

    def floor():
        for _ in range(stats.nfe):
            field(t[0], y0)

    def floor_setup():  # the two evaluations the setup makes: f0 and the first step's probe
        for _ in range(2):
            field(t[0], y0)

    def time_tensors():
        for t0, h in steps:
            for c in stage_times:
                torch.full((), t0 + c * h, dtype=y0.dtype, device=y0.device)

    def stage_sums():
        for _, h in steps:
            for _, row in DOPRI5.stage_plan:
                j, w = row[0]
                out = torch.add(y0, stages[j], alpha=h * w)
                for j, w in row[1:]:
                    out.add_(stages[j], alpha=h * w)

    def error_estimate():
        for _, h in steps:
            (j, w), *rest = DOPRI5.error_plan
            error = stages[j] * (h * w)
            for j, w in rest:
                error.add_(stages[j], alpha=h * w)

    y_steps = [y0 + 0.01 * k for k in range(len(steps) + 1)]

    def error_ratio():
        ratio = SteppedErrorRatio()
        for k in range(len(steps)):
            ratio(stages[0], y_steps[k], y_steps[k + 1], 1e-6, 1e-6)

    def setup():
        options = as_options(None, OPTIONS)
        times = check_times(t)
        stepper = make_stepper(field, y0, times, options)
        solution(stepper, y0, [y0], t, times, options)

    parts = {"time tensors": (time_tensors, 2 + len(steps) * len(stage_times)),
             "stage sums": (stage_sums, len(steps) * sum(len(row) for _, row in DOPRI5.stage_plan)),
             "error estimate": (error_estimate, len(steps) * len(DOPRI5.error_plan)),
             "error ratio": (error_ratio, len(steps) * 6),
             "setup (less its 2 evaluations)": (setup, None)}
    contenders = {"solve": solve, "floor": floor, "floor 2": floor_setup}
    contenders.update({name: run for name, (run, _) in parts.items()})
    with torch.no_grad():
        times = interleaved_medians({name: _repeated(run, inner) for name, run in contenders.items()},
                                    repeats=repeats, warmup=1, clock=time.process_time)
    times = {name: seconds / inner for name, seconds in times.items()}
    times["setup (less its 2 evaluations)"] -= times["floor 2"]
    floor_s = times["floor"]
    rows = [("solve", "", f"{1e6 * times['solve']:.0f}", f"{times['solve'] / floor_s:.3f}"),
            (f"floor ({stats.nfe} evaluations of f)", "", f"{1e6 * floor_s:.0f}", "1.000")]
    accounted = floor_s
    for name, (_, ops) in parts.items():
        accounted += times[name]
        rows.append((name, "" if ops is None else ops, f"{1e6 * times[name]:.0f}",
                     f"{times[name] / floor_s:.3f}"))
    rest = times["solve"] - accounted
    rows.append(("step loop's Python (the rest)", "", f"{1e6 * rest:.0f}", f"{rest / floor_s:.3f}"))
    print_table(f"(b') where the eager tiny-MLP solve's time goes ({stats.n_accepted} + {stats.n_rejected} "
                f"steps, NFE {stats.nfe}; CPU µs per solve, median of {repeats} interleaved rounds of "
                f"{inner} runs each, warm; each part replayed alone with the solve's own steps)", rows,
                ("part", "torch ops", "cpu_us", "x_floor"))


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
