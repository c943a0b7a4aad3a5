"""GPU timings: our solvers against torchdiffeq (and torchode when installed) on CUDA, and the cost of
per-sample step control, each as wall-clock medians of interleaved runs with the GPU synchronised.

    python -m bench.bench_gpu --repeats 15 --out OUT      # needs a CUDA device; writes OUT/bench_gpu.json

(a) conv field (batch 256, 64 channels, 16×16), dopri5 rtol = atol = 1e-3: forward and forward+backward,
    time per evaluation against the floor (the same number of bare field evaluations).
(b) tiny MLP field on a [1024, 2] state, dopri5 rtol = atol = 1e-6: per-step overhead (launch-bound on a GPU).
(c) the MNIST ODE-net (``odenet_mnist_small``), batch 512: shared vs per-sample step control, per evaluation.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import stability
from bench.fields import ConvField, TinyMLPField, evaluation_floor
from bench.timing import print_table

try:
    import torchdiffeq
except ImportError:  # pragma: no cover - peer installed by bench/setup.sh
    torchdiffeq = None


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_medians(contenders: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Interleaved (rotated) rounds; each run is timed from a synchronised start to a synchronised end."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    synchronize()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize()
            start = time.perf_counter()
            contenders[name]()
            synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def field_benchmark(field, y0, options, repeats, label, results, backward_modes=(False, True)):
    t = torch.tensor([0.0, 1.0], device=y0.device)
    solvers = {"stability": lambda y: stability.odeint(field, y, t, method="dopri5", **options)[-1]}
    if torchdiffeq is not None:
        solvers["torchdiffeq"] = lambda y: torchdiffeq.odeint(field, y, t, method="dopri5", **options)[-1]

    def run(solver, backward):
        y = y0.clone().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            out = solver(y)
            if backward:
                out.sum().backward()

    nfe = {}
    for name, solver in solvers.items():
        field.nfe = 0
        run(solver, False)
        nfe[name] = field.nfe

    def floor(n: int, backward: bool):
        evaluation_floor(field, t[0], y0, n, backward)

    rows = []
    for backward in backward_modes:
        contenders = {name: (lambda s=solver, b=backward: run(s, b)) for name, solver in solvers.items()}
        for n in sorted(set(nfe.values())):
            contenders[f"floor {n}"] = lambda n=n, b=backward: floor(n, b)
        times = gpu_medians(contenders, repeats)
        mode = "forward+backward" if backward else "forward"
        for name in solvers:
            row = {"case": label, "mode": mode, "solver": name, "nfe": nfe[name], "seconds": times[name],
                   "ms_per_nfe": 1e3 * times[name] / nfe[name],
                   "x_floor": times[name] / times[f"floor {nfe[name]}"]}
            results.append(row)
            rows.append((label, mode, name, nfe[name], f"{times[name]:.4f}", f"{row['ms_per_nfe']:.3f}",
                         f"{row['x_floor']:.3f}"))
    print_table(f"{label} (wall-clock s, median of {repeats}, GPU synchronised)", rows,
                ("case", "mode", "solver", "nfe", "s", "ms/nfe", "x_floor"))


def odenet_benchmark(repeats, results, device):
    from nets import build_model

    torch.manual_seed(0)
    model = build_model("odenet_mnist_small").to(device).eval()
    x = torch.rand(512 if device.type == "cuda" else 16, 1, 28, 28, device=device)
    runs, nfe = {}, {}
    for per_sample in (False, True):
        def forward(p=per_sample):
            with torch.no_grad(), model.ode_block.solver_override(per_sample=p):
                model(x)
        name = "per-sample" if per_sample else "shared"
        runs[name] = forward
        model.ode_block.pop_solver_stats()
        forward()
        stats = model.ode_block.pop_solver_stats()
        nfe[name] = f"{stats.get('nfe')} (per-sample sum {stats.get('sample_nfe')})"
    times = gpu_medians(runs, repeats)
    rows = []
    for name in runs:
        results.append({"case": "odenet_mnist_small batch 512", "mode": "forward", "solver": name,
                        "nfe": nfe[name], "seconds": times[name]})
        rows.append((name, nfe[name], f"{times[name]:.4f}"))
    print_table("(c) odenet_mnist_small, batch 512, forward (wall-clock s)", rows, ("control", "nfe", "s"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=None, help="folder for bench_gpu.json")
    parser.add_argument("--device", default="cuda", help="cuda (the point), or cpu to try the script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; use a GPU machine (or --device cpu to try it)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    results: list[dict] = []
    generator = torch.Generator(device=device).manual_seed(0)
    conv = ConvField().to(device)
    y0 = torch.randn(256 if device.type == "cuda" else 8, 64, 16, 16, device=device, generator=generator)
    field_benchmark(conv, y0, {"rtol": 1e-3, "atol": 1e-3}, args.repeats, "(a) conv field", results)
    mlp = TinyMLPField().to(device)
    y0 = torch.randn(1024, 2, device=device, generator=generator)
    field_benchmark(mlp, y0, {"rtol": 1e-6, "atol": 1e-6}, args.repeats, "(b) tiny MLP", results, (False,))
    odenet_benchmark(args.repeats, results, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    meta = {"device": name, "torch": torch.__version__, "python": platform.python_version(),
            "torchdiffeq": getattr(torchdiffeq, "__version__", None), "repeats": args.repeats}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "bench_gpu.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
