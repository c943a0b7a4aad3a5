"""Cross-check FAB-T against AutoAttack's reference code (``pyautoattack``'s ``FABAttack_PT``).

    python -m bench.crosscheck_fab --data-dir $NR_DATA_DIR --seed 0 --out docs/results/fab_crosscheck.json

The same CNN and images as ``bench/crosscheck_autoattack.py`` (``crosscheck_attacks.small_cnn``, one seeded
epoch on 20k MNIST images; the first ``--samples`` test images), L-inf eps in {0.1, 0.2, 0.3}. Both sides in
AutoAttack "standard"'s FAB-T settings: 100 iterations, one restart, nine target classes, alpha_max 0.1,
eta 1.05, beta 0.9, batches of 250, standalone on all images. Every returned point is verified here
(``crosscheck_autoattack.verify``): robust iff correctly classified and the returned point is not a valid
adversarial (misclassified, within ``eps + 1e-6``, in [0, 1]). Reported per eps: robust accuracy of each,
the difference in percentage points (target <= 1), the samples only one side finds robust, and the CPU
seconds of each (process time, so other load on the machine does not count) and their ratio ours/reference.

pyautoattack is installed by bench/setup.sh; it is not a dependency of the library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crosscheck_attacks import batched, load_mnist_float, train_small_cnn  # noqa: E402
from crosscheck_autoattack import bits, verify  # noqa: E402

from attacks.fab import FABT  # noqa: E402
from storage.atomic import atomic_write_text  # noqa: E402


def run_side(side: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int, batch: int,
             steps: int, targets: int) -> tuple[Tensor, float, float]:
    """``(x_adv, wall seconds, CPU seconds)`` of one side on all ``x``."""
    torch.manual_seed(seed)
    if side == "ours":
        attack = FABT(eps, steps=steps, restarts=1, target_classes=targets, norm="linf", seed=seed)
        run = lambda a, b: attack(model, a, b)  # noqa: E731
    else:
        from pyautoattack.fab_pt import FABAttack_PT

        reference = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=steps, eps=eps, seed=seed,
                                 targeted=True, n_target_classes=targets, verbose=False)
        run = reference.perturb
    wall, cpu = time.perf_counter(), time.process_time()
    x_adv = batched(run, x, y, batch).detach()
    return x_adv, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("NR_DATA_DIR"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's training and both attacks")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--targets", type=int, default=9)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the results as JSON here (after every cell)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import pyautoattack  # noqa: F401  (fail early if the peer is missing)

    started = time.time()
    model = train_small_cnn(args.data_dir, args.seed)
    x, y = load_mnist_float(args.data_dir, "test", args.samples)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    results: dict = {"command": "python -m bench.crosscheck_fab " + " ".join(argv or sys.argv[1:]),
                     "seed": args.seed, "samples": args.samples, "steps": args.steps, "targets": args.targets,
                     "batch": args.batch, "threads": args.threads, "torch": torch.__version__,
                     "pyautoattack": pyautoattack.__version__, "clean_accuracy": clean, "cells": []}
    print(f"small_cnn trained in {time.time() - started:.1f} s; clean accuracy {100 * clean:.2f}%",
          flush=True)
    for eps in args.eps:
        cell: dict = {"attack": "FAB-T", "eps": eps}
        robust = {}
        for side in ("ours", "reference"):
            x_adv, wall, cpu = run_side(side, model, x, y, eps, args.seed, args.batch, args.steps,
                                        args.targets)
            robust[side], check = verify(model, x, y, x_adv, eps)
            cell[side] = {"robust_accuracy": float(robust[side].float().mean()), "wall_s": wall, "cpu_s": cpu,
                          **check, "robust": bits(robust[side])}
        cell["difference_pp"] = 100 * (cell["ours"]["robust_accuracy"] - cell["reference"]["robust_accuracy"])
        cell["only_ours_robust"] = int((robust["ours"] & ~robust["reference"]).sum())
        cell["only_reference_robust"] = int((robust["reference"] & ~robust["ours"]).sum())
        cell["cpu_ratio_ours_to_reference"] = cell["ours"]["cpu_s"] / max(cell["reference"]["cpu_s"], 1e-9)
        results["cells"].append(cell)
        print(f"FAB-T eps={eps:.2f}  robust accuracy ours {100 * cell['ours']['robust_accuracy']:6.2f}%  "
              f"pyautoattack {100 * cell['reference']['robust_accuracy']:6.2f}%  "
              f"difference {cell['difference_pp']:+.2f} pp  only ours/ref robust {cell['only_ours_robust']}/"
              f"{cell['only_reference_robust']}  CPU {cell['ours']['cpu_s']:.0f} s / "
              f"{cell['reference']['cpu_s']:.0f} s (ratio {cell['cpu_ratio_ours_to_reference']:.2f}); "
              f"outside the ball {cell['ours']['outside_ball']} / {cell['reference']['outside_ball']}",
              flush=True)
        if args.out:
            atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    differences = [abs(c["difference_pp"]) for c in results["cells"]]
    results["max_abs_difference_pp"] = max(differences)
    results["target_met"] = max(differences) <= 1.0
    results["cpu_ratio_total"] = (sum(c["ours"]["cpu_s"] for c in results["cells"])
                                  / max(sum(c["reference"]["cpu_s"] for c in results["cells"]), 1e-9))
    results["total_wall_s"] = time.time() - started
    print(f"max |ours - pyautoattack| = {max(differences):.2f} pp (target <= 1); CPU-time ratio "
          f"ours/reference {results['cpu_ratio_total']:.2f}")
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["target_met"] else 1)
