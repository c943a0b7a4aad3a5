"""Solver benchmark: ours vs torchdiffeq vs torchode vs the floor (the f evaluations alone), one run.

(a) Neural-ODE conv field (GroupNorm-ReLU-conv3x3 twice, 64 channels, 7×7, batch 128), dopri5 at
    rtol = atol = 1e-3 on t ∈ [0, 1]: forward and forward+backward time and NFE, against the floor of the
    same number of f evaluations (forward: on one input; forward+backward: summed and backpropagated).
(b) Tiny MLP field (dim 2, batch 1), dopri5 at rtol = atol = 1e-6 on t ∈ [0, 50]: each solve against the
    floor of its own NFE (that many f evaluations in one timing window); also ``compile=True`` (its compile
    time and its agreement with the eager solve are printed).
(c) Per-sample vs shared step control on the conv field at 1e-3 (no grad), and torchode (per-sample
    control by construction) on the same problem.
(d) What the checks of func's output at every evaluation cost, per evaluation.
(e) Where the conv forward time goes: CPU time and minor page faults inside f and outside it (the solver's
    own work), for ours, torchdiffeq and the floor of (a) — what separates a solve from its floor.

Times are CPU-time medians of interleaved rounds (``time.process_time``, all threads of this process).
Run:  bash bench/setup.sh && OMP_WAIT_POLICY=PASSIVE python -m bench.bench_solvers [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import timeit

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402
import torchdiffeq  # noqa: E402

import stability  # noqa: E402
from bench.fields import ConvField, TinyMLPField, evaluation_floor  # noqa: E402
from bench.timing import interleaved_medians, interleaved_samples, print_table  # noqa: E402

try:
    import torchode  # noqa: E402
except ImportError:  # pragma: no cover - optional peer
    torchode = None

CPU = time.process_time


def torchode_solver(field, shape, rtol: float, atol: float):
    """torchode's dopri5 with its integral controller on a [batch, features] view of the state."""
    batch, rest = shape[0], shape[1:]
    term = torchode.ODETerm(lambda t, y: field(t, y.view(batch, *rest)).reshape(batch, -1))
    method = torchode.Dopri5(term=term)
    controller = torchode.IntegralController(atol=atol, rtol=rtol, term=term)
    solver = torchode.AutoDiffAdjoint(method, controller)

    def solve(y0: torch.Tensor, t1: float):
        t_eval = torch.tensor([0.0, t1]).expand(batch, 2)
        sol = solver.solve(torchode.InitialValueProblem(y0=y0.reshape(batch, -1), t_eval=t_eval))
        return sol.ys[:, -1].view(shape), sol.stats

    return solve


def conv_benchmark(repeats: int) -> None:
    field = ConvField()
    uncounted = ConvField(counting=False)
    y0 = torch.randn(128, 64, 7, 7, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 1.0])
    options = dict(rtol=1e-3, atol=1e-3)
    tode = torchode_solver(field, y0.shape, **options) if torchode else None
    compile_s, agreement, compiled_nfe = compiled_solve(uncounted, y0, t, dict(method="dopri5", **options))

    def contender(kind: str):
        def run(backward: bool):
            y = y0.clone().requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                if kind == "stability":
                    out = stability.odeint(field, y, t, method="dopri5", **options)[-1]
                elif kind == "stability compile=True":  # forward only: no compiled backward graph
                    out = stability.odeint(uncounted, y, t, method="dopri5", compile=True, **options)[-1]
                elif kind == "torchdiffeq":
                    out = torchdiffeq.odeint(field, y, t, method="dopri5", **options)[-1]
                else:
                    out = tode(y, 1.0)[0]
                if backward:
                    out.sum().backward()

        return run

    kinds = ["stability", "torchdiffeq"] + (["torchode"] if tode else [])
    runs = {kind: contender(kind) for kind in kinds + ["stability compile=True"]}
    nfe = {}
    for kind in kinds:
        field.nfe = 0
        runs[kind](False)
        nfe[kind] = field.nfe
    nfe["stability compile=True"] = compiled_nfe

    def floor(n: int, backward: bool):
        evaluation_floor(field, t[0], y0, n, backward)

    rows = []
    for backward in (False, True):
        timed = kinds if backward else kinds[:1] + ["stability compile=True"] + kinds[1:]
        contenders = {kind: (lambda b=backward, k=kind: runs[k](b)) for kind in timed}
        for n in sorted(set(nfe.values())):
            contenders[f"floor {n}"] = lambda b=backward, n=n: floor(n, b)
        times = interleaved_medians(contenders, repeats=repeats, clock=CPU)
        for kind in timed:
            per_nfe = times[kind] / nfe[kind]
            rows.append(("forward+backward" if backward else "forward", kind, nfe[kind], f"{times[kind]:.3f}",
                         f"{1e3 * per_nfe:.2f}", f"{times[kind] / times[f'floor {nfe[kind]}']:.3f}",
                         f"{per_nfe / (times['stability'] / nfe['stability']):.2f}"))
    print_table(f"(a) conv field, batch 128, 64ch 7x7, dopri5 rtol=atol=1e-3, t in [0, 1] (CPU-s, median of "
                f"{repeats}); compile=True: {compile_s:.1f} s to compile (wall), {agreement}", rows,
                ("mode", "solver", "nfe", "cpu_s", "ms/nfe", "x_floor", "per_nfe/ours"))


def compiled_solve(field, y0, t, options) -> tuple[float, str, int]:
    """Compile (the first ``compile=True`` solve, wall time: inductor compiles in worker processes), the
    agreement of its solution with the eager one (max relative difference, steps and rejections each), NFE."""
    start = time.perf_counter()
    with torch.no_grad():
        compiled = stability.solve(field, y0, t, compile=True, **options)
        eager = stability.solve(field, y0, t, **options)
    seconds = time.perf_counter() - start
    difference = float((compiled.ys - eager.ys).abs().max() / eager.ys.abs().max())
    steps = lambda s: f"{s.stats.n_accepted}+{s.stats.n_rejected}"  # noqa: E731
    return seconds, (f"compiled vs eager: max rel difference {difference:.1e}, accepted+rejected steps "
                     f"{steps(compiled)} vs {steps(eager)}"), compiled.stats.nfe


def mlp_benchmark(repeats: int) -> None:
    """Each solve against the floor of its own NFE: the same number of f evaluations in one timing window
    (``evaluation_floor``), so the floor pays what the solve pays for the first evaluations after another
    contender has run. x_floor = solve time / floor time: 1.0 would be a solver with no cost of its own."""
    field = TinyMLPField()
    uncounted = TinyMLPField(counting=False)  # the same weights; compile=True traces func: no side effects
    y0 = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([0.0, 50.0])
    options = dict(method="dopri5", rtol=1e-6, atol=1e-6)
    tode = torchode_solver(field, y0.shape, rtol=1e-6, atol=1e-6) if torchode else None
    compile_s, agreement, _ = compiled_solve(uncounted, y0, t, options)
    with torch.no_grad():
        eager = stability.solve(field, y0, t, **options)
        compiled = stability.solve(uncounted, y0, t, compile=True, **options)
        field.nfe = 0
        torchdiffeq.odeint(field, y0, t, **options)
        nfe = {"stability": eager.stats.nfe, "stability compile=True": compiled.stats.nfe,
               "torchdiffeq": field.nfe}
        steps = {"stability": eager.stats.n_steps, "stability compile=True": compiled.stats.n_steps,
                 "torchdiffeq": (field.nfe - 2) // 6}  # f0, initial-step probe, 6 per attempted step (FSAL)
        if tode:
            field.nfe = 0
            stats = tode(y0, 50.0)[1]
            nfe["torchode"], steps["torchode"] = field.nfe, int(stats["n_steps"].max())

    contenders = {"stability": lambda: stability.solve(field, y0, t, **options),
                  "stability compile=True": lambda: stability.solve(uncounted, y0, t, compile=True,
                                                                    **options),
                  "torchdiffeq": lambda: torchdiffeq.odeint(field, y0, t, **options)}
    if tode:
        contenders["torchode"] = lambda: tode(y0, 50.0)
    for n in sorted(set(nfe.values())):
        contenders[f"floor {n}"] = lambda n=n: evaluations(field, t[0], y0, n)
    with torch.no_grad():
        times = interleaved_medians(contenders, repeats=repeats, warmup=2, clock=CPU)
    rows = []
    for name in nfe:
        per_step, floor = times[name] / steps[name], times[f"floor {nfe[name]}"]
        rows.append((name, nfe[name], steps[name], f"{1e3 * times[name]:.3f}", f"{1e6 * per_step:.1f}",
                     f"{1e3 * floor:.3f}", f"{times[name] / floor:.2f}"))
    print_table(f"(b) tiny MLP field dim 2 batch 1, dopri5 rtol=atol=1e-6, t in [0, 50], no grad (CPU, "
                f"median of {repeats} interleaved rounds); floor = the solve's own NFE evaluations of f in "
                f"one timing window; compile=True: {compile_s:.1f} s to compile (wall), {agreement}", rows,
                ("solver", "nfe", "steps", "cpu_ms", "us/step", "floor_ms", "x_floor"))


def evaluations(field, t: torch.Tensor, y: torch.Tensor, n: int) -> None:
    """The MLP's floor: ``n`` plain evaluations of f in one window, nothing else timed with them."""
    for _ in range(n):
        field(t, y)


def per_sample_benchmark(repeats: int) -> None:
    field = ConvField()
    y0 = torch.randn(128, 64, 7, 7, generator=torch.Generator().manual_seed(0))
    options = dict(rtol=1e-3, atol=1e-3)
    tode = torchode_solver(field, y0.shape, **options) if torchode else None
    nfe = {}

    def shared():
        nfe["shared"] = stability.solve(field, y0, [0.0, 1.0], **options).stats.nfe

    def per_sample():
        sol = stability.solve(field, y0, [0.0, 1.0], per_sample=True, **options)
        nfe["per-sample"] = max(sol.nfe)  # batched evaluations: every sample takes part in the longest run
        nfe["per-sample mean"] = sum(sol.nfe) / len(sol.nfe)

    def ode():
        field.nfe = 0
        tode(y0, 1.0)
        nfe["torchode"] = field.nfe

    contenders = {"shared": shared, "per-sample": per_sample}
    if tode:
        contenders["torchode"] = ode
    with torch.no_grad():
        times = interleaved_medians(contenders, repeats=repeats, clock=CPU)
    rows = [(name, nfe[name], f"{times[name]:.3f}", f"{times[name] / times['shared']:.3f}",
             f"{(times[name] / nfe[name]) / (times['shared'] / nfe['shared']):.3f}") for name in contenders]
    print_table(f"(c) step control, conv field batch 128 as drawn, dopri5 1e-3, no grad (CPU-s, median of "
                f"{repeats}); per-sample mean NFE {nfe['per-sample mean']:.1f}", rows,
                ("mode", "batched_nfe", "cpu_s", "time/shared", "per_nfe/shared"))


class Metered(torch.nn.Module):
    """``field`` with the CPU time and the minor page faults spent inside its evaluations added up."""

    def __init__(self, field: torch.nn.Module) -> None:
        super().__init__()
        self.field, self.seconds, self.faults = field, 0.0, 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start, faults = CPU(), minor_faults()
        out = self.field(t, y)
        self.seconds += CPU() - start
        self.faults += minor_faults() - faults
        return out


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_split_benchmark(repeats: int) -> None:
    field = Metered(ConvField())
    y0 = torch.randn(128, 64, 7, 7, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 1.0])
    options = dict(method="dopri5", rtol=1e-3, atol=1e-3)
    contenders = {"stability": lambda: stability.odeint(field, y0, t, **options),
                  "torchdiffeq": lambda: torchdiffeq.odeint(field, y0, t, **options),
                  "floor 20": lambda: evaluation_floor(field, t[0], y0, 20, False)}

    def split(run) -> tuple[float, float, float, int, int]:
        """(total, inside f, outside f) CPU seconds and (inside, outside) minor faults of one run."""
        field.seconds, field.faults = 0.0, 0
        start, faults = CPU(), minor_faults()
        run()
        total, total_faults = CPU() - start, minor_faults() - faults
        return total, field.seconds, total - field.seconds, field.faults, total_faults - field.faults

    with torch.no_grad():
        samples = interleaved_samples(contenders, repeats, warmup=1, measure=split)
    median = {name: [statistics.median(column) for column in zip(*rows)] for name, rows in samples.items()}
    floor_total, floor_inside = median["floor 20"][0], median["floor 20"][1]
    rows = [(name, f"{total:.4f}", f"{inside:.4f}", f"{outside:.4f}", f"{inside / floor_inside:.3f}",
             f"{outside / floor_total:.3f}", f"{total / floor_total:.3f}", int(faults_in), int(faults_out))
            for name, (total, inside, outside, faults_in, faults_out) in median.items()]
    print_table(f"(e) conv field forward of (a), where the time goes (CPU-s and minor page faults, median of "
                f"{repeats}): f inside the solve vs f in the floor, the solver's own work as a share of the "
                f"floor", rows, ("contender", "cpu_s", "in_f", "outside_f", "in_f/floor_f",
                                 "outside/floor", "x_floor", "faults_in_f", "faults_outside"))


def check_cost() -> None:
    """The per-evaluation checks of ``OdeSolver.fun``: y unchanged (version counter), output type, shape,
    dtype, and not the previous output overwritten (data pointer and version)."""
    y = torch.randn(128, 64, 7, 7)
    f = torch.randn(128, 64, 7, 7)
    last, last_version = torch.randn(128, 64, 7, 7), 0
    version = y._version
    n = 200_000
    seconds = timeit.timeit(
        lambda: (y._version != version or not isinstance(f, torch.Tensor) or f.shape != y.shape
                 or f.dtype != y.dtype
                 or (f.data_ptr() == last.data_ptr() and last._version != last_version)),
        number=n,
    ) / n
    print(f"\n(d) output checks per evaluation (in-place change of y, type, shape, dtype, reused buffer): "
          f"{1e6 * seconds:.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-conv", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peers = f"torchdiffeq {getattr(torchdiffeq, '__version__', '?')}"
    peers += f", torchode {getattr(torchode, '__version__', '?')}" if torchode else ", torchode missing"
    print(f"torch {torch.__version__}, {peers}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    check_cost()
    mlp_benchmark(max(args.repeats, 5))
    if not args.skip_conv:
        conv_benchmark(args.repeats)
        per_sample_benchmark(args.repeats)
        time_split_benchmark(args.repeats)


if __name__ == "__main__":
    main()
