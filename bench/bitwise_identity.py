"""Bitwise before/after check of existing solves: outputs, gradients and step statistics.

Runs a fixed set of solves (methods × step control × gradient strategy × dtype) on seeded fields and saves
every output, every gradient (w.r.t. y0 and the field's parameters) and the statistics (NFE, accepted and
rejected steps, every step size and step time) to a file; ``--compare`` re-runs them and reports every
case that differs in a single bit. Used to show that a change to the solver's hot path (e.g. cutting
per-step Python overhead) leaves existing results unchanged.

Run:  python -m bench.bitwise_identity --save BEFORE.pt     (on the old code)
      python -m bench.bitwise_identity --compare BEFORE.pt  (on the new code; exit status 1 on a difference)
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

import stability

CASES = [  # (name, options, dtype)
    ("dopri5 shared f64", dict(method="dopri5", rtol=1e-6, atol=1e-8), torch.float64),
    ("dopri5 shared f32", dict(method="dopri5", rtol=1e-5, atol=1e-6), torch.float32),
    ("tsit5 shared f64", dict(method="tsit5", rtol=1e-7, atol=1e-9), torch.float64),
    ("bosh3 shared f64", dict(method="bosh3", rtol=1e-5, atol=1e-7), torch.float64),
    ("heun shared f64", dict(method="heun", rtol=1e-4, atol=1e-6), torch.float64),
    ("rk4 fixed f64", dict(method="rk4", step_size=0.05), torch.float64),
    ("euler fixed f32", dict(method="euler", step_size=0.01), torch.float32),
    ("dopri5 per-sample f64", dict(method="dopri5", rtol=1e-6, atol=1e-8, per_sample=True), torch.float64),
    ("bosh3 per-sample f32", dict(method="bosh3", rtol=1e-4, atol=1e-6, per_sample=True), torch.float32),
    ("dopri5 checkpoint f64", dict(method="dopri5", rtol=1e-6, atol=1e-8, gradient="checkpoint"),
     torch.float64),
    ("dopri5 adjoint f64", dict(method="dopri5", rtol=1e-6, atol=1e-8, gradient="adjoint"), torch.float64),
    ("dopri5 max_step f64", dict(method="dopri5", rtol=1e-6, atol=1e-8, max_step=0.05), torch.float64),
    ("dopri5 PI beta f64", dict(method="dopri5", rtol=1e-6, atol=1e-8,
                                controller=stability.PIController(beta=0.04)), torch.float64),
    # without a graph (no_grad): outputs and statistics
    ("dopri5 no-grad f64", dict(method="dopri5", rtol=1e-7, atol=1e-9, no_grad=True), torch.float64),
    ("dopri5 no-grad f32", dict(method="dopri5", rtol=1e-5, atol=1e-6, no_grad=True), torch.float32),
    ("tsit5 no-grad f64", dict(method="tsit5", rtol=1e-7, atol=1e-9, no_grad=True), torch.float64),
    ("bosh3 no-grad f32", dict(method="bosh3", rtol=1e-4, atol=1e-6, no_grad=True), torch.float32),
    ("rk4 fixed no-grad f64", dict(method="rk4", step_size=0.05, no_grad=True), torch.float64),
]


class Field(nn.Module):
    """f(t, y) = W2 tanh(W1 y + b1 + t·c) + b2 with seeded weights (time-dependent, batch-independent)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(3, 16, generator=generator, dtype=dtype) * 0.8)
        self.b1 = nn.Parameter(torch.randn(16, generator=generator, dtype=dtype) * 0.3)
        self.c = nn.Parameter(torch.randn(16, generator=generator, dtype=dtype) * 0.3)
        self.w2 = nn.Parameter(torch.randn(16, 3, generator=generator, dtype=dtype) * 0.8)
        self.b2 = nn.Parameter(torch.randn(3, generator=generator, dtype=dtype) * 0.1)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = t.to(y.dtype)
        shift = t[:, None] * self.c if t.dim() == 1 else t * self.c
        return torch.tanh(y @ self.w1 + self.b1 + shift) @ self.w2 + self.b2


def run_case(options: dict, dtype: torch.dtype) -> dict:
    options = dict(options)
    no_grad = options.pop("no_grad", False)
    field = Field(dtype)
    generator = torch.Generator().manual_seed(1)
    y0 = torch.randn(4, 3, generator=generator, dtype=dtype).requires_grad_(not no_grad)
    t = torch.tensor([0.0, 0.3, 1.0, 2.0], dtype=torch.float64)
    if no_grad:
        with torch.no_grad():
            solution = stability.solve(field, y0, t, **options)
        s = solution.stats
        return {"ys": solution.ys.clone(),
                "stats": [(s.nfe, s.n_accepted, s.n_rejected, list(s.step_sizes), list(s.step_times))]}
    solution = stability.solve(field, y0, t, **options)
    weights = torch.linspace(0.5, 1.5, solution.ys.numel(), dtype=dtype).view_as(solution.ys)
    (solution.ys * weights).sum().backward()
    runs = solution.stats if isinstance(solution.stats, list) else [solution.stats]
    stats = [(s.nfe, s.n_accepted, s.n_rejected, list(s.step_sizes), list(s.step_times)) for s in runs]
    return {"ys": solution.ys.detach().clone(), "grad_y0": y0.grad.clone(),
            "grad_params": [p.grad.clone() for p in field.parameters()], "stats": stats}


def identical(a, b) -> bool:
    if isinstance(a, torch.Tensor):  # the same bytes: equal values, signs of zeros and NaN payloads
        return (a.dtype == b.dtype and a.shape == b.shape
                and a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--save", metavar="FILE")
    action.add_argument("--compare", metavar="FILE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {name: run_case(options, dtype) for name, options, dtype in CASES}
    if args.save:
        torch.save(results, args.save)
        print(f"saved {len(results)} cases to {args.save}")
        return
    before = torch.load(args.compare)
    differing = [name for name in results if name not in before or not identical(before[name], results[name])]
    for name in results:
        print(f"{name:>26}: {'DIFFERENT' if name in differing else 'bit-identical'}")
    same = len(results) - len(differing)
    print(f"{same}/{len(results)} cases bit-identical (outputs, gradients, statistics)")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
