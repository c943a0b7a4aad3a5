"""Solver benchmark: ours vs torchdiffeq vs the floor (the f evaluations alone), side by side, one run.

(a) Neural-ODE conv field (GroupNorm-ReLU-conv3x3 twice, 64 channels, 7×7, batch 128), dopri5 at
    rtol = atol = 1e-3 on t ∈ [0, 1]: forward and forward+backward time and NFE.
(b) Tiny MLP field (dim 2, batch 1), dopri5 at rtol = atol = 1e-6 on t ∈ [0, 50]: time per step.

Run:  bash bench/setup.sh && python -m bench.bench_solvers [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402
import torchdiffeq  # noqa: E402

import stability  # noqa: E402
from bench.fields import ConvField, TinyMLPField  # noqa: E402
from bench.timing import interleaved_medians, print_table  # noqa: E402


def conv_benchmark(repeats: int) -> None:
    field = ConvField()
    y0 = torch.randn(128, 64, 7, 7, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 1.0])
    options = dict(rtol=1e-3, atol=1e-3)

    def ours(backward: bool):
        y = y0.clone().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            out = stability.odeint(field, y, t, method="dopri5", **options)[-1]
            if backward:
                out.sum().backward()

    def peer(backward: bool):
        y = y0.clone().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            out = torchdiffeq.odeint(field, y, t, method="dopri5", **options)[-1]
            if backward:
                out.sum().backward()

    def count(run) -> int:
        field.nfe = 0
        run(False)
        return field.nfe

    nfe = {"stability": count(ours), "torchdiffeq": count(peer)}

    def floor(n: int, backward: bool):
        y = y0.clone().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            total = sum(field(t[0], y).sum() for _ in range(n))
            if backward:
                total.backward()

    rows = []
    for backward in (False, True):
        label = "forward+backward" if backward else "forward"
        times = interleaved_medians({
            "stability": lambda b=backward: ours(b),
            "torchdiffeq": lambda b=backward: peer(b),
            "floor(ours)": lambda b=backward: floor(nfe["stability"], b),
            "floor(peer)": lambda b=backward: floor(nfe["torchdiffeq"], b),
        }, repeats=repeats)
        per_nfe_ours = times["stability"] / nfe["stability"]
        per_nfe_peer = times["torchdiffeq"] / nfe["torchdiffeq"]
        rows.append((label, nfe["stability"], nfe["torchdiffeq"], f"{times['stability']:.3f}",
                     f"{times['torchdiffeq']:.3f}", f"{1e3 * per_nfe_ours:.2f}", f"{1e3 * per_nfe_peer:.2f}",
                     f"{per_nfe_ours / per_nfe_peer:.3f}", f"{times['stability'] / times['floor(ours)']:.3f}",
                     f"{times['torchdiffeq'] / times['floor(peer)']:.3f}"))
    title = "(a) conv field, batch 128, 64ch 7x7, dopri5 rtol=atol=1e-3, t in [0, 1]  (median seconds)"
    print_table(title, rows,
                ("mode", "nfe_ours", "nfe_tdq", "s_ours", "s_tdq", "ms/nfe_ours", "ms/nfe_tdq",
                 "ours/tdq_per_nfe", "ours/floor", "tdq/floor"))


def mlp_benchmark(repeats: int) -> None:
    field = TinyMLPField()
    y0 = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([0.0, 50.0])
    options = dict(rtol=1e-6, atol=1e-6)
    steps = {}

    def ours():
        sol = stability.solve(field, y0, t, method="dopri5", **options)
        steps["stability"] = sol.stats.n_steps

    def peer():
        field.nfe = 0
        torchdiffeq.odeint(field, y0, t, method="dopri5", **options)
        steps["torchdiffeq"] = (field.nfe - 2) // 6  # f0, initial-step probe, 6 per attempted step (FSAL)

    def floor():
        for _ in range(6):
            field(t[0], y0)

    with torch.no_grad():
        times = interleaved_medians({"stability": ours, "torchdiffeq": peer, "6 f-evals": floor},
                                    repeats=repeats)
    per_ours = times["stability"] / steps["stability"]
    per_peer = times["torchdiffeq"] / steps["torchdiffeq"]
    floor_time = times["6 f-evals"]
    print_table("(b) tiny MLP field dim 2 batch 1, dopri5 rtol=atol=1e-6, t in [0, 50], no grad", [
        ("stability", steps["stability"], f"{1e6 * per_ours:.1f}", f"{per_ours / floor_time:.2f}"),
        ("torchdiffeq", steps["torchdiffeq"], f"{1e6 * per_peer:.1f}", f"{per_peer / floor_time:.2f}"),
    ], ("solver", "steps", "us/step", "step/floor(6 f)"))
    print(f"speed-up per step, torchdiffeq/stability: {per_peer / per_ours:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-conv", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peer_version = getattr(torchdiffeq, "__version__", "?")
    print(f"torch {torch.__version__}, torchdiffeq {peer_version}, threads {torch.get_num_threads()}")
    mlp_benchmark(max(args.repeats, 5))
    if not args.skip_conv:
        conv_benchmark(args.repeats)


if __name__ == "__main__":
    main()
