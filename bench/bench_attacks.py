"""Attack speed against the plain-torch floor and the peers, contenders interleaved, medians reported.

    python bench/bench_attacks.py --data-dir /path/to/data --seed 0

* PGD-40 (L-inf, eps 0.3, alpha 0.01, random start) on a batch of 256 MNIST test images. Floor: 40 plain
  forward + backward passes (``torch.autograd.grad`` of the cross-entropy w.r.t. the input), nothing else,
  on a random point of the eps-ball around the batch (the cost of a pass is data dependent).
  Contenders: ours, ``torchattacks.PGD``, ``foolbox.attacks.LinfPGD`` (``run``, no success evaluation).
  Target: ours <= 1.05x the floor.
* Boundary Attack, 1000 iterations on 16 correctly classified test images. Floor ("query floor"): the very
  model calls the attack made (same number, same batch sizes; recorded in a separate, identical seeded run),
  replayed as bare ``no_grad`` forward passes. Each attack is compared with its own query floor; ours is
  ``BoundaryAttack(steps=1000)`` with an unlimited query budget, foolbox's ``BoundaryAttack(steps=1000)``
  with its default initialization. Target: ours <= 1.10x its floor.

The model is ``crosscheck_attacks.small_cnn`` trained for one seeded epoch on 20k MNIST images (~10 s).
Medians of wall time and of this process's CPU time are reported; on a shared machine the CPU-time ratio is
the one to trust (other processes inflate wall time at random).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crosscheck_attacks import CountingModel, load_mnist_float, train_small_cnn  # noqa: E402

from attacks import PGD, BoundaryAttack  # noqa: E402
from storage.atomic import atomic_write_text  # noqa: E402


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is robust to other processes on the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Run every contender once per round (one warm-up round first), rotating the order each round; return
    the median wall and CPU time of each."""
    names = list(contenders)
    for name in names:
        contenders[name]()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(contenders[name]))
    return {name: {"wall": statistics.median([t[0] for t in values]),
                   "cpu": statistics.median([t[1] for t in values])} for name, values in times.items()}


def ratio_line(label: str, result: dict[str, float], floor: dict[str, float], extra: str = "") -> str:
    return (f"  {label:12s} wall {result['wall']:.3f} s = {result['wall'] / floor['wall']:.3f}x floor   "
            f"cpu {result['cpu']:.3f} s = {result['cpu'] / floor['cpu']:.3f}x floor{extra}")


def pgd_benchmark(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, seed: int) -> dict:
    import foolbox as fb
    import torchattacks

    eps, alpha, steps = 0.3, 0.01, 40

    # the floor runs on inputs like the attack's iterates (a random start in the eps-ball): the cost of a
    # forward/backward pass is data dependent on CPU (clean MNIST digits, mostly zeros, run ~10 % faster)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    x_floor = (x + (2 * noise - 1) * eps).clamp(0, 1)

    def floor() -> None:
        for _ in range(steps):
            x_req = x_floor.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)

    ours = PGD(eps, alpha=alpha, steps=steps, seed=seed)
    peer = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    fb_attack = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
    criterion = fb.criteria.Misclassification(y)
    return interleaved({
        "floor": floor,
        "ours": lambda: ours(model, x, y),
        "torchattacks": lambda: peer(x, y),
        "foolbox": lambda: fb_attack.run(fmodel, x, criterion, epsilon=eps),
    }, repeats)


def replay(model: nn.Module, batch_sizes: list[int], shape: tuple[int, ...],
           points: torch.Tensor | None = None) -> Callable[[], None]:
    """Bare ``no_grad`` forward passes of the given batch sizes, on the first rows of ``points`` (inputs like
    the attack's own: the cost of a pass is data dependent) or, without them, on uniform noise."""
    def rows(size: int) -> torch.Tensor:
        if points is None or size > points.shape[0]:
            return torch.rand(size, *shape)
        return points[:size].clone()

    inputs = {size: rows(size) for size in set(batch_sizes)}

    def run() -> None:
        with torch.no_grad():
            for size in batch_sizes:
                model(inputs[size])

    return run


def boundary_benchmark(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, seed: int) -> dict:
    import foolbox as fb

    steps = 1000

    def ours_on(target: nn.Module) -> BoundaryAttack:
        attack = BoundaryAttack(max_queries=10**9, steps=steps, seed=seed)
        attack(target, x, y)
        return attack

    def foolbox_on(target: nn.Module) -> None:
        torch.manual_seed(seed)
        fmodel = fb.PyTorchModel(target, bounds=(0, 1))
        fb.attacks.BoundaryAttack(steps=steps).run(fmodel, x, fb.criteria.Misclassification(y))

    ours_calls, foolbox_calls = CountingModel(model).eval(), CountingModel(model).eval()
    recorded = ours_on(ours_calls)
    foolbox_on(foolbox_calls)
    shape = tuple(x.shape[1:])
    medians: dict = interleaved({
        "ours": lambda: ours_on(model),
        "ours_floor": replay(model, ours_calls.batch_sizes, shape),
        "foolbox": lambda: foolbox_on(model),
        "foolbox_floor": replay(model, foolbox_calls.batch_sizes, shape),
    }, repeats)
    medians["ours_model_calls"] = ours_calls.calls
    medians["ours_queries_per_sample"] = int(recorded.last_stats["queries"].max())
    medians["foolbox_model_calls"] = foolbox_calls.calls
    return medians


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("NR_DATA_DIR"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", choices=["pgd", "boundary"], action="append", default=[])
    parser.add_argument("--out", default=None, help="write the medians as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = train_small_cnn(args.data_dir, args.seed)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    x, y = load_mnist_float(args.data_dir, "test", 512)
    results: dict = {"seed": args.seed, "repeats": args.repeats, "threads": args.threads}

    if "pgd" not in args.skip:
        pgd = pgd_benchmark(model, x[:256], y[:256], args.repeats, args.seed)
        results["pgd40_batch256"] = pgd
        print(f"PGD-40, batch 256 (medians of {args.repeats}): floor wall {pgd['floor']['wall']:.3f} s, "
              f"cpu {pgd['floor']['cpu']:.3f} s")
        for name in ("ours", "torchattacks", "foolbox"):
            print(ratio_line(name, pgd[name], pgd["floor"]))

    if "boundary" not in args.skip:
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        bx, by = x[correct][:16], y[correct][:16]
        boundary = boundary_benchmark(model, bx, by, args.repeats, args.seed)
        results["boundary1000_batch16"] = boundary
        print(f"Boundary Attack, 1000 steps, 16 images (medians of {args.repeats}; "
              "each attack vs its own query floor):")
        print(ratio_line("ours", boundary["ours"], boundary["ours_floor"],
                         f"   ({boundary['ours_model_calls']} model calls)"))
        print(ratio_line("foolbox", boundary["foolbox"], boundary["foolbox_floor"],
                         f"   ({boundary['foolbox_model_calls']} model calls)"))
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
