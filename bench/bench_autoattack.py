"""APGD and Square speed against their floors and AutoAttack's reference code, interleaved, medians reported.

    python bench/bench_autoattack.py --data-dir /work/shared/data --seed 0 --repeats 5 \
        --out docs/results/autoattack_speed.json

* APGD-CE, 100 iterations, 1 restart, L-inf eps 0.3, on a batch of the first 256 correctly classified MNIST
  test images (so that every contender attacks all 256). Floor: 101 plain forward + backward passes
  (``torch.autograd.grad`` of the cross-entropy w.r.t. the input; the initial point and 100 iterates), nothing
  else, on a random point of the eps-ball around the batch. Contenders: ours (``APGD``) and pyautoattack's
  ``APGDAttack``. Target: ours <= 1.05x the floor.
* Square, L-inf, p_init 0.8, on the first 64 correctly classified test images (``--square-queries`` 1000,
  ``--square-eps`` 0.1). Floor ("query floor"): the very model calls the attack made (same number, same batch
  sizes; recorded with ``CountingModel`` in a separate, identical seeded run), replayed as bare ``no_grad``
  forward passes on points like the attack's (random vertices of the eps-ball, clipped to [0, 1]). Each attack
  is compared with its own query floor; contenders: ours (``Square``) and pyautoattack's ``SquareAttack`` (its
  schedule unscaled, as in AutoAttack standard). Target: ours <= 1.10x its query floor.

The model is ``crosscheck_attacks.small_cnn`` trained for one seeded epoch on 20k MNIST images. Medians of
wall time and of this process's CPU time (``time.process_time``) are reported; on a shared machine the
CPU-time ratio is the one to trust.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attacks import interleaved, ratio_line, replay  # noqa: E402
from crosscheck_attacks import CountingModel, load_mnist_float, train_small_cnn  # noqa: E402

from attacks import APGD, Square  # noqa: E402
from storage.atomic import atomic_write_text  # noqa: E402


def apgd_benchmark(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, seed: int,
                   steps: int = 100, eps: float = 0.3) -> dict:
    from pyautoattack.autopgd_base import APGDAttack

    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    x_floor = (x + (2 * noise - 1) * eps).clamp(0, 1)

    def floor() -> None:
        for _ in range(steps + 1):
            x_req = x_floor.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)

    ours = APGD(eps, steps=steps, restarts=1, loss="ce", seed=seed)
    reference = APGDAttack(model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps, seed=seed, loss="ce",
                           eot_iter=1, rho=0.75, verbose=False)
    return interleaved({
        "floor": floor,
        "ours": lambda: ours(model, x, y),
        "pyautoattack": lambda: reference.perturb(x, y),
    }, repeats)


def square_benchmark(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, seed: int,
                     queries: int, eps: float) -> dict:
    from pyautoattack.square import SquareAttack

    def ours_on(target: nn.Module) -> Square:
        attack = Square(eps, max_queries=queries, p_init=0.8, seed=seed)
        attack(target, x, y)
        return attack

    def reference_on(target: nn.Module) -> None:
        SquareAttack(target, norm="Linf", n_queries=queries, eps=eps, p_init=0.8, n_restarts=1, seed=seed,
                     verbose=False, loss="margin", resc_schedule=False).perturb(x, y)

    ours_calls, reference_calls = CountingModel(model).eval(), CountingModel(model).eval()
    recorded = ours_on(ours_calls)
    with torch.no_grad():
        reference_on(reference_calls)
    # the floor replays on points like Square's iterates (vertices of the eps-ball, clipped to [0, 1]): a
    # forward pass on uniform noise costs ~5 % more CPU time than on these (fewer exact zeros)
    sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(seed)) * 2.0 - 1.0
    vertices = (x + eps * sign).clamp(0.0, 1.0)
    shape = tuple(x.shape[1:])
    medians: dict = interleaved({
        "ours": lambda: ours_on(model),
        "ours_floor": replay(model, ours_calls.batch_sizes, shape, vertices),
        "pyautoattack": lambda: reference_on(model),
        "pyautoattack_floor": replay(model, reference_calls.batch_sizes, shape, vertices),
    }, repeats)
    medians["ours_model_calls"] = ours_calls.calls
    medians["ours_rows_evaluated"] = sum(ours_calls.batch_sizes)
    medians["ours_max_queries_per_sample"] = int(recorded.last_stats["queries"].max())
    medians["ours_fooled"] = int(recorded.last_stats["fooled"].sum())
    medians["pyautoattack_model_calls"] = reference_calls.calls
    medians["pyautoattack_rows_evaluated"] = sum(reference_calls.batch_sizes)
    return medians


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("NR_DATA_DIR"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--apgd-batch", type=int, default=256)
    parser.add_argument("--square-batch", type=int, default=64)
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--square-eps", type=float, default=0.1)
    parser.add_argument("--skip", choices=["apgd", "square"], action="append", default=[])
    parser.add_argument("--out", default=None, help="write the medians as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import pyautoattack

    model = train_small_cnn(args.data_dir, args.seed)
    x, y = load_mnist_float(args.data_dir, "test", 2 * max(args.apgd_batch, args.square_batch))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    results: dict = {"seed": args.seed, "repeats": args.repeats, "threads": args.threads,
                     "torch": torch.__version__, "pyautoattack": pyautoattack.__version__}

    if "apgd" not in args.skip:
        apgd = apgd_benchmark(model, x[:args.apgd_batch], y[:args.apgd_batch], args.repeats, args.seed)
        apgd["ours_ratio_cpu"] = apgd["ours"]["cpu"] / apgd["floor"]["cpu"]
        apgd["ours_ratio_wall"] = apgd["ours"]["wall"] / apgd["floor"]["wall"]
        apgd["target_met"] = apgd["ours_ratio_cpu"] <= 1.05
        results[f"apgd_ce100_batch{args.apgd_batch}"] = apgd
        print(f"APGD-CE 100 it., eps 0.3, batch {args.apgd_batch} (medians of {args.repeats}): floor "
              f"(101 forward+backward) wall {apgd['floor']['wall']:.3f} s, cpu {apgd['floor']['cpu']:.3f} s",
              flush=True)
        for name in ("ours", "pyautoattack"):
            print(ratio_line(name, apgd[name], apgd["floor"]), flush=True)

    if "square" not in args.skip:
        sx, sy = x[:args.square_batch], y[:args.square_batch]
        square = square_benchmark(model, sx, sy, args.repeats, args.seed, args.square_queries,
                                  args.square_eps)
        square["eps"], square["queries"] = args.square_eps, args.square_queries
        square["ours_ratio_cpu"] = square["ours"]["cpu"] / square["ours_floor"]["cpu"]
        square["ours_ratio_wall"] = square["ours"]["wall"] / square["ours_floor"]["wall"]
        square["target_met"] = square["ours_ratio_cpu"] <= 1.10
        results[f"square{args.square_queries}_batch{args.square_batch}"] = square
        print(f"Square, {args.square_queries} queries, eps {args.square_eps}, {args.square_batch} images "
              f"(medians of {args.repeats}; each attack vs its own query floor):")
        print(ratio_line("ours", square["ours"], square["ours_floor"],
                         f"   ({square['ours_model_calls']} model calls, "
                         f"{square['ours_rows_evaluated']} rows)"))
        print(ratio_line("pyautoattack", square["pyautoattack"], square["pyautoattack_floor"],
                         f"   ({square['pyautoattack_model_calls']} model calls, "
                         f"{square['pyautoattack_rows_evaluated']} rows)"))
        print(f"  ours vs pyautoattack: cpu {square['ours']['cpu']:.3f} s vs "
              f"{square['pyautoattack']['cpu']:.3f} s")
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
