"""Cross-check APGD-CE, APGD-T and Square against AutoAttack's reference code (``pyautoattack``).

    python bench/crosscheck_autoattack.py --data-dir /work/shared/data --seed 0 \
        --out docs/results/autoattack_crosscheck.json

On one CNN (``crosscheck_attacks.small_cnn``, one seeded epoch on 20k MNIST images) and the first
``--samples`` test images, at L-inf eps in {0.1, 0.2, 0.3}, each attack runs standalone on all images
(batches of 250, as AutoAttack's ``run_standard_evaluation``) in AutoAttack "standard"'s settings, ours vs
the reference:

* APGD-CE: 100 iterations, 1 restart, rho 0.75 (``APGD`` vs ``APGDAttack``);
* APGD-T: 100 iterations, 9 target classes, 1 restart (``APGDT`` vs ``APGDAttack_targeted``);
* Square: 5000 queries, p_init 0.8, margin loss, no schedule rescaling (``Square`` vs ``SquareAttack``;
  the reference makes one more model call per sample: its budget counts the iterations, ours the initial
  point too).

Both sides use the attack seed ``--attack-seed`` (default ``--seed``, the reference classes' default 0;
``AutoAttack(seed=None)`` would draw it from the clock); ``--seed`` also seeds the model's training. Every
returned point is verified here on the model: a sample is robust iff it is correctly classified and its
adversarial is not (misclassified, ``||x_adv - x||_inf <= eps + 1e-6``, in [0, 1]); points outside the ball
are counted and never count as fooled. Reported: robust accuracy per attack, and the per-example worst case
(robust against all three). Target: |ours - reference| <= 1 percentage point per cell.

pyautoattack is installed by bench/setup.sh; it is not a dependency of the library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crosscheck_attacks import batched, load_mnist_float, train_small_cnn  # noqa: E402

from attacks import APGD, APGDT, Square  # noqa: E402
from storage.atomic import atomic_write_text  # noqa: E402

ATTACKS = ("APGD-CE", "APGD-T", "Square")
BALL_TOLERANCE = 1e-6


def ours(name: str, eps: float, seed: int) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """Our attack in AutoAttack standard's settings."""
    if name == "APGD-CE":
        return APGD(eps, steps=100, restarts=1, loss="ce", norm="linf", rho=0.75, seed=seed)
    if name == "APGD-T":
        return APGDT(eps, steps=100, restarts=1, target_classes=9, norm="linf", rho=0.75, seed=seed)
    return Square(eps, max_queries=5000, norm="linf", p_init=0.8, loss="margin", seed=seed)


def reference(name: str, model: nn.Module, eps: float, seed: int,
              square_positions: str = "reference") -> Callable[[Tensor, Tensor], Tensor]:
    """pyautoattack's attack, configured as ``AutoAttack(version="standard")`` configures it.

    ``square_positions="paper"`` (an ablation): its Square draws window corners from {0, ..., h - s} as the
    paper does; as released, ``random_int(0, h - s)`` floors ``h - s`` times a uniform draw, so a window never
    touches the last row or column."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.square import SquareAttack

    class PaperPositionsSquare(SquareAttack):
        def random_int(self, low=0, high=1, shape=(1,)):  # only draws window corners when untargeted
            return super().random_int(low, high + 1, list(shape))

    if name == "APGD-CE":
        return APGDAttack(model, n_iter=100, norm="Linf", n_restarts=1, eps=eps, seed=seed, loss="ce",
                          eot_iter=1, rho=0.75, verbose=False).perturb
    if name == "APGD-T":
        return APGDAttack_targeted(model, n_iter=100, norm="Linf", n_restarts=1, eps=eps, seed=seed,
                                   eot_iter=1, rho=0.75, n_target_classes=9, verbose=False).perturb
    square = PaperPositionsSquare if square_positions == "paper" else SquareAttack
    return square(model, norm="Linf", n_queries=5000, eps=eps, p_init=0.8, n_restarts=1, seed=seed,
                        verbose=False, loss="margin", resc_schedule=False).perturb


def verify(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, eps: float,
           batch: int = 500) -> tuple[Tensor, dict]:
    """Per-sample robustness, checked here: correct on ``x`` and ``x_adv`` is not a valid adversarial."""
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]) == y
        fooled = torch.cat([model(x_adv[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]) != y
    distance = (x_adv - x).flatten(1).abs().amax(dim=1)
    in_range = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(dim=1)
    valid = (distance <= eps + BALL_TOLERANCE) & in_range
    invalid = fooled & ~valid
    return clean & ~(fooled & valid), {"max_linf": float(distance.max()), "outside_ball": int(invalid.sum())}


def bits(flags: Tensor) -> str:
    return "".join("1" if bool(f) else "0" for f in flags)


def run_cell(model: nn.Module, x: Tensor, y: Tensor, name: str, eps: float, seed: int, batch: int,
             square_positions: str = "reference") -> dict:
    """One (attack, eps) cell: ours, then the reference, both on all ``x``; robust flags verified here."""
    cell: dict = {"attack": name, "eps": eps}
    for side in ("ours", "reference"):
        torch.manual_seed(seed)
        if side == "ours":
            attack = ours(name, eps, seed)
            run = lambda a, b, f=attack: f(model, a, b)  # noqa: E731
        else:
            run = reference(name, model, eps, seed, square_positions)
        wall, cpu = time.perf_counter(), time.process_time()
        x_adv = batched(run, x, y, batch).detach()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        robust, check = verify(model, x, y, x_adv, eps)
        cell[side] = {"robust_accuracy": float(robust.float().mean()), "wall_s": wall, "cpu_s": cpu,
                      **check, "robust": bits(robust)}
    robust_ours = torch.tensor([c == "1" for c in cell["ours"]["robust"]])
    robust_reference = torch.tensor([c == "1" for c in cell["reference"]["robust"]])
    cell["difference_pp"] = 100 * (cell["ours"]["robust_accuracy"] - cell["reference"]["robust_accuracy"])
    cell["only_ours_robust"] = int((robust_ours & ~robust_reference).sum())
    cell["only_reference_robust"] = int((robust_reference & ~robust_ours).sum())
    return cell


def worst_case(cells: list[dict], side: str) -> Tensor:
    robust = torch.ones(len(cells[0][side]["robust"]), dtype=torch.bool)
    for cell in cells:
        robust &= torch.tensor([c == "1" for c in cell[side]["robust"]])
    return robust


def table(results: dict) -> str:
    lines = [f"{'attack':10s} {'eps':>4s} {'ours %':>7s} {'ref %':>7s} {'diff pp':>8s} "
             f"{'only ours':>9s} {'only ref':>8s} {'ours s':>7s} {'ref s':>7s}"]
    for cell in results["cells"]:
        o, r = cell["ours"], cell["reference"]
        lines.append(f"{cell['attack']:10s} {cell['eps']:4.1f} {100 * o['robust_accuracy']:7.1f} "
                     f"{100 * r['robust_accuracy']:7.1f} {cell['difference_pp']:+8.1f} "
                     f"{cell['only_ours_robust']:9d} {cell['only_reference_robust']:8d} "
                     f"{o['wall_s']:7.1f} {r['wall_s']:7.1f}")
    for row in results["worst_case"]:
        lines.append(f"{'worst case':10s} {row['eps']:4.1f} {100 * row['ours']:7.1f} "
                     f"{100 * row['reference']:7.1f} {row['difference_pp']:+8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("NR_DATA_DIR"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's training")
    parser.add_argument("--attack-seed", type=int, default=None,
                        help="seed of both attacks (default: --seed)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--batch", type=int, default=250, help="AutoAttack's default batch size")
    parser.add_argument("--reference-square-positions", choices=["reference", "paper"], default="reference",
                        help="ablation: 'paper' lets the reference Square's windows reach the last row "
                        "and column")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here (after every cell)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    attack_seed = args.seed if args.attack_seed is None else args.attack_seed
    import pyautoattack  # noqa: F401  (fail early if the peer is missing)

    started = time.time()
    model = train_small_cnn(args.data_dir, args.seed)
    x, y = load_mnist_float(args.data_dir, "test", args.samples)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    results: dict = {"seed": args.seed, "attack_seed": attack_seed, "samples": args.samples,
                     "batch": args.batch, "threads": args.threads,
                     "reference_square_positions": args.reference_square_positions,
                     "torch": torch.__version__, "pyautoattack": pyautoattack.__version__,
                     "clean_accuracy": clean, "cells": [], "worst_case": []}
    print(f"small_cnn trained in {time.time() - started:.1f} s; clean accuracy {100 * clean:.2f}%",
          flush=True)

    for eps in args.eps:
        cells = []
        for name in args.attacks:
            cell = run_cell(model, x, y, name, eps, attack_seed, args.batch, args.reference_square_positions)
            cells.append(cell)
            results["cells"].append(cell)
            print(f"{name:8s} eps={eps:.1f}  robust accuracy "
                  f"ours {100 * cell['ours']['robust_accuracy']:6.2f}%  "
                  f"pyautoattack {100 * cell['reference']['robust_accuracy']:6.2f}%  "
                  f"difference {cell['difference_pp']:+.2f} pp  ({cell['ours']['wall_s']:.0f} s / "
                  f"{cell['reference']['wall_s']:.0f} s; outside the ball {cell['ours']['outside_ball']} / "
                  f"{cell['reference']['outside_ball']})", flush=True)
            if args.out:
                atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
        worst = {side: worst_case(cells, side) for side in ("ours", "reference")}
        row = {"eps": eps, "attacks": list(args.attacks), "ours": float(worst["ours"].float().mean()),
               "reference": float(worst["reference"].float().mean())}
        row["difference_pp"] = 100 * (row["ours"] - row["reference"])
        results["worst_case"].append(row)
        print(f"worst case eps={eps:.1f}  ours {100 * row['ours']:6.2f}%  pyautoattack "
              f"{100 * row['reference']:6.2f}%  difference {row['difference_pp']:+.2f} pp", flush=True)
        if args.out:
            atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    differences = [abs(c["difference_pp"]) for c in results["cells"]]
    results["max_abs_difference_pp"] = max(differences)
    results["target_met"] = max(differences) <= 1.0
    results["total_wall_s"] = time.time() - started
    print(table(results))
    print(f"max |ours - pyautoattack| = {max(differences):.2f} pp (target <= 1)")
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
