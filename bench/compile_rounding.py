"""How far ``compile=True`` rounds from the eager step, and what that does to the step sequence.

Field: a 2 → 32 → 2 tanh MLP (seeded), dopri5 at rtol = atol = 1e-6 on t ∈ [0, 10], y0 = (1, 0.5), in float32
and in float64.
Prints (1) the accepted/rejected steps and NFE of the eager and the compiled solve and their final states,
(2) at every accepted step of the eager solve, the same step (same t, y, h) taken eagerly and compiled:
the relative difference of the new state and of the error ratio, and the smallest distance |ratio − 1| of
any step, i.e. how close a decision came to flipping.

Run:  python -m bench.compile_rounding
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

import stability
from stability.compiled import compiled_step
from stability.methods import DOPRI5
from stability.runge_kutta import rk_step
from stability.step_control import error_ratio

RTOL = ATOL = 1e-6


class MLPField(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def main() -> None:
    torch.set_num_threads(1)
    for dtype in (torch.float32, torch.float64):
        print(f"\n{dtype}")
        compare(MLPField().to(dtype), torch.tensor([[1.0, 0.5]], dtype=dtype))


def compare(field: nn.Module, y0: torch.Tensor) -> None:
    with torch.no_grad():
        eager = stability.solve(field, y0, [0.0, 10.0], rtol=RTOL, atol=ATOL)
        compiled = stability.solve(field, y0, [0.0, 10.0], rtol=RTOL, atol=ATOL, compile=True)
        for name, sol in (("eager", eager), ("compiled", compiled)):
            s = sol.stats
            print(f"{name:>9}: {s.n_accepted} accepted + {s.n_rejected} rejected steps, nfe {s.nfe}, "
                  f"y(10) = {sol.ys[-1, 0].tolist()}")
        final = float((compiled.ys[-1] - eager.ys[-1]).abs().max() / eager.ys[-1].abs().max())
        print(f"final states differ by {final:.2e} (max relative)")

        step = compiled_step(field, DOPRI5, RTOL, ATOL)

        def fun(s, z):
            return field(torch.tensor(s, dtype=y0.dtype), z)

        y, state_differences, ratio_differences, margins = y0, [], [], []
        for t, h in zip(eager.stats.step_times, eager.stats.step_sizes):
            ours = rk_step(fun, t, y, h, DOPRI5)
            ratio = error_ratio(ours.error, y, ours.y, RTOL, ATOL)
            graph, graph_ratio = step(torch.tensor([t, h], dtype=torch.float64), y, None)
            state_differences.append(float((graph.y - ours.y).abs().max() / ours.y.abs().max()))
            ratio_differences.append(abs(float(graph_ratio) - ratio) / ratio)
            margins.append(abs(ratio - 1.0))
            y = ours.y
    print(f"same step eager vs compiled over the {len(margins)} accepted eager steps: new state max rel "
          f"difference {max(state_differences):.2e} (median {statistics.median(state_differences):.2e}); "
          f"error ratio max rel difference {max(ratio_differences):.2e} (median "
          f"{statistics.median(ratio_differences):.2e}); closest ratio to the accept threshold 1: "
          f"|r − 1| = {min(margins):.2e}")


if __name__ == "__main__":
    main()
