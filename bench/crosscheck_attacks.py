"""Cross-check our attacks against the peers (torchattacks, foolbox) on one quickly trained MNIST CNN.

    python bench/crosscheck_attacks.py --data-dir /path/to/data --seed 0

* FGSM and PGD-40 (L-inf, alpha 0.01, random start) robust accuracy, ours vs ``torchattacks``, at
  eps in {0.1, 0.2, 0.3} on the first ``--samples`` test images: target |difference| <= 1 percentage point.
* DI2-FGSM: ours in torchattacks' variant (``variant="batch"``) vs ``torchattacks.DIFGSM``, and ours in the
  paper's per-sample variant, fed to the model as the enlarged canvas (``canvas``, the paper; off-distribution
  for this fixed-size CNN) or resized back to 28x28 (``input``). Informational: the methods differ.
* Boundary Attack at a budget of 1000 queries per sample (initialization included) on the first
  ``--boundary-samples`` correctly classified test images: median L2, ours vs
  ``foolbox.attacks.BoundaryAttack`` (its default blended-noise initialization, steps chosen so that its
  counted queries stay <= 1000).
  Target: ours <= 1.2x foolbox.

The model (``small_cnn``: conv16-pool-conv32-pool-fc100-fc10, ~160k parameters) is trained for one epoch on
the first 20k training images with Adam (seeded, ~10 s on 2 CPU cores). Peers are installed by
bench/setup.sh; they are not dependencies of the library.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from attacks import DI2FGSM, FGSM, PGD, BoundaryAttack
from storage.atomic import atomic_write_text


def small_cnn() -> nn.Sequential:
    """The MNIST-sized CNN used by the attack benchmarks and cross-checks (inputs 1x28x28 in [0, 1])."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def load_mnist_float(data_dir: str | None, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from nets.datasets import load_dataset

    dataset = load_dataset("mnist", split, data_dir, progress=False).subset(count)
    return dataset.images.float() / 255.0, dataset.labels


def train_small_cnn(data_dir: str | None, seed: int, train_samples: int = 20_000,
                    device: str = "cpu") -> nn.Module:
    """One seeded epoch of Adam (lr 1e-3, batch 64) on the first ``train_samples`` MNIST training images."""
    torch.manual_seed(seed)
    model = small_cnn().to(device)
    x, y = load_mnist_float(data_dir, "train", train_samples)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for start in range(0, x.shape[0], 64):
        index = order[start:start + 64]
        loss = F.cross_entropy(model(x[index].to(device)), y[index].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    with torch.no_grad():
        hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                   for i in range(0, len(x), batch))
    return hits / len(x)


def batched(attack, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([attack(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])


class CountingModel(nn.Module):
    """Counts model evaluations per sample row (every call evaluates all rows of its batch)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.batch_sizes.append(int(x.shape[0]))
        return self.model(x)


def foolbox_boundary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, seed: int,
                     steps: int | None = None, update_stats_every_k: int = 10):
    """foolbox's BoundaryAttack with its default initialization; returns (x_adv, queries per sample).

    foolbox attacks the batch in lock step, so every call costs one query per sample. With ``steps=None``
    the number of steps is the largest that keeps init + 1 check + steps + steps // k <= ``budget``.
    """
    import foolbox as fb

    counting = CountingModel(model).eval()
    fmodel = fb.PyTorchModel(counting, bounds=(0, 1))
    criterion = fb.criteria.Misclassification(y)
    torch.manual_seed(seed)
    starts = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50).run(fmodel, x, criterion)
    init_calls = counting.calls
    if steps is None:
        steps = budget - init_calls - 1
        while steps > 0 and init_calls + 1 + steps + steps // update_stats_every_k > budget:
            steps -= 1
    attack = fb.attacks.BoundaryAttack(steps=steps, update_stats_every_k=update_stats_every_k)
    x_adv = attack.run(fmodel, x, criterion, starting_points=starts)
    return x_adv, counting.calls, starts


def l2_norms(delta: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(delta.flatten(1), dim=1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("NR_DATA_DIR"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1000, help="test images for FGSM / PGD / DI2-FGSM")
    parser.add_argument("--boundary-samples", type=int, default=64)
    parser.add_argument("--budget", type=int, default=1000, help="Boundary Attack queries per sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import foolbox  # noqa: F401  (fail early if a peer is missing)
    import torchattacks

    started = time.time()
    model = train_small_cnn(args.data_dir, args.seed)
    x, y = load_mnist_float(args.data_dir, "test", args.samples)
    results: dict = {"seed": args.seed, "samples": args.samples, "clean_accuracy": accuracy(model, x, y)}
    print(f"small_cnn trained in {time.time() - started:.1f} s; "
          f"clean accuracy {100 * results['clean_accuracy']:.2f}%")

    rows = []
    for eps in (0.1, 0.2, 0.3):
        pairs = {
            "FGSM": (lambda m, a, b, e=eps: FGSM(e, seed=args.seed)(m, a, b),
                     torchattacks.FGSM(model, eps=eps)),
            "PGD-40": (lambda m, a, b, e=eps: PGD(e, alpha=0.01, steps=40, seed=args.seed)(m, a, b),
                       torchattacks.PGD(model, eps=eps, alpha=0.01, steps=40, random_start=True)),
            "DI2FGSM-batch": (lambda m, a, b, e=eps: DI2FGSM(e, alpha=0.01, steps=40, variant="batch",
                                                             resize_rate=0.9, seed=args.seed)(m, a, b),
                              torchattacks.DIFGSM(model, eps=eps, alpha=0.01, steps=40, resize_rate=0.9)),
        }
        for name, (ours, peer) in pairs.items():
            torch.manual_seed(args.seed)
            ours_accuracy = accuracy(model, batched(lambda a, b, f=ours: f(model, a, b), x, y), y)
            peer_accuracy = accuracy(model, batched(peer, x, y), y)
            difference = 100 * (ours_accuracy - peer_accuracy)
            rows.append({"attack": name, "eps": eps, "ours": ours_accuracy, "torchattacks": peer_accuracy,
                         "difference_pp": difference})
            print(f"{name:14s} eps={eps:.1f}  robust accuracy ours {100 * ours_accuracy:6.2f}%  "
                  f"torchattacks {100 * peer_accuracy:6.2f}%  difference {difference:+.2f} pp")
            if name.startswith("DI2FGSM"):  # batch-level randomness: the peer's own seed-to-seed spread
                torch.manual_seed(args.seed + 1000)
                again = accuracy(model, batched(peer, x, y), y)
                rows[-1]["torchattacks_other_seed"] = again
                print(f"{'':14s} torchattacks with another seed {100 * again:6.2f}% "
                      f"(its own spread {100 * (again - peer_accuracy):+.2f} pp)")
        for output_size in ("canvas", "input"):
            paper = DI2FGSM(eps, alpha=0.01, steps=40, output_size=output_size, seed=args.seed)
            paper_accuracy = accuracy(model, batched(lambda a, b, f=paper: f(model, a, b), x, y), y)
            name = f"DI2FGSM-paper-{output_size}"
            rows.append({"attack": name, "eps": eps, "ours": paper_accuracy})
            print(f"{name:14s} eps={eps:.1f}  robust accuracy ours {100 * paper_accuracy:6.2f}% "
                  "(per-sample enlarge-and-pad; no peer implements it)")
    results["white_box"] = rows

    # -- Boundary Attack -------------------------------------------------------------------------------------
    pool_x, pool_y = load_mnist_float(args.data_dir, "test", 4 * args.boundary_samples + 100)
    with torch.no_grad():
        correct = model(pool_x).argmax(1) == pool_y
    bx, by = pool_x[correct][: args.boundary_samples], pool_y[correct][: args.boundary_samples]
    ours = BoundaryAttack(max_queries=args.budget, seed=args.seed)
    counting = CountingModel(model).eval()
    start = time.perf_counter()
    ours_adv = ours(counting, bx, by)
    ours_seconds = time.perf_counter() - start
    with torch.no_grad():
        assert bool((model(ours_adv).argmax(1) != by).all()), "a returned point is not adversarial"
    ours_l2 = l2_norms(ours_adv - bx)
    ours_queries = int(ours.last_stats["queries"].max())

    start = time.perf_counter()
    fb_adv, fb_queries, fb_starts = foolbox_boundary(model, bx, by, args.budget, args.seed)
    fb_seconds = time.perf_counter() - start
    fb_l2 = l2_norms(fb_adv - bx)
    same_start = BoundaryAttack(max_queries=args.budget, seed=args.seed)
    same_start_l2 = l2_norms(same_start(model, bx, by, starting_points=fb_starts) - bx)

    ours_median, fb_median = statistics.median(ours_l2.tolist()), statistics.median(fb_l2.tolist())
    same_start_median = statistics.median(same_start_l2.tolist())
    results["boundary"] = {
        "samples": int(bx.shape[0]), "budget": args.budget,
        "ours_median_l2": ours_median, "ours_max_queries": ours_queries, "ours_seconds": ours_seconds,
        "foolbox_median_l2": fb_median, "foolbox_queries": fb_queries, "foolbox_seconds": fb_seconds,
        "ours_from_foolbox_starts_median_l2": same_start_median,
        "ratio": ours_median / fb_median,
    }
    print(f"Boundary Attack, {bx.shape[0]} images, <= {args.budget} queries per image (init included):")
    print(f"  median L2 ours {ours_median:.4f} ({ours_queries} queries max, {ours_seconds:.1f} s)   "
          f"foolbox {fb_median:.4f} ({fb_queries} queries, {fb_seconds:.1f} s)")
    print(f"  ours started from foolbox's initial points: median L2 {same_start_median:.4f}")
    print(f"  ratio ours / foolbox median L2 = {ours_median / fb_median:.3f} (target <= 1.2)")
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
