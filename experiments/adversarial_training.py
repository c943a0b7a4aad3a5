"""Short MNIST adversarial-training baselines: natural vs PGD-AT, TRADES and YOPO on one small CNN.

    python -m experiments.adversarial_training --data-dir DIR --out runs/adversarial_training --seed 0

Each method trains the same seeded small CNN (``small_mnist_cnn``: normalize + conv5x5(16, stride 2) as
``first_layer``, then conv5x5(32), pool, fc100, fc10) with ``nets.training.train`` and its own ``loss_fn``:

* ``natural``: cross-entropy;
* ``pgd-at``: ``attacks.PGDAdversarialLoss(eps, steps=--at-steps)`` (Madry et al.);
* ``trades``: ``attacks.TRADESLoss(eps, steps=--at-steps, beta=--beta)`` (Zhang et al. 2019b);
* ``yopo``: ``attacks.YOPOLoss(eps, m=--yopo-m, n=--yopo-n, alpha=--yopo-alpha)`` (Zhang et al. 2019a).

With ``--warmup-epochs W`` the adversarial methods ramp eps linearly from eps/steps to eps over the first W
epochs (``attacks.LinearEpsWarmup``); without it, PGD-AT at eps = 0.3 can stay at chance for the few
epochs a CPU-scale run affords.

It then reports clean accuracy and FGSM / PGD-40 (alpha 0.01, random start) robust accuracy at ``--eps`` on
the first ``--eval-samples`` test images, per method, in ``OUT/<method>/robustness.json`` and
``OUT/summary.{csv,json}``. Runs resume (``nets.training``'s checkpoints); a finished method is a record of
the project's record store (``OUT/records``, stamped with its settings and the version of the code) and is
not redone unless its settings or code changed; a training folder left by other ``stability``/``nets``/
``attacks`` code is retrained from scratch, named.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attacks import (
    FGSM,
    PGD,
    LinearEpsWarmup,
    PGDAdversarialLoss,
    ResultTable,
    TRADESLoss,
    YOPOLoss,
    evaluate_attack,
)
from experiments.cli import Outputs, add_data_arguments, make_parser, positive_int, run, setup
from storage.atomic import atomic_write_text
from storage.code_version import MODEL_CODE, CodeGuard, code_version, model_folder_is_current
from storage.records import RecordStore

METHODS = ("natural", "pgd-at", "trades", "yopo")
#: what a method's report depends on: the training and evaluation code and this module
REPORT_CODE = MODEL_CODE + ("attacks", "experiments/adversarial_training.py")
#: options that do not change a method's numbers (where files go, how it is shown, which methods run)
UNSTAMPED = {"out", "data_dir", "download", "no_verify", "no_progress", "threads", "debug", "methods",
             "device"}


def small_mnist_cnn() -> nn.Module:
    """A CPU-sized MNIST CNN exposing the YOPO split (``first_layer`` / ``forward_from_first_layer``)."""
    from nets.classifier import ImageClassifier
    from nets.datasets import MNIST_INFO

    # the stride-2 first layer keeps YOPO's first-layer passes cheap on CPU (a stride-1 conv on 28x28 costs
    # about half of a whole forward/backward pass here)
    body = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
    head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
    return ImageClassifier(1, nn.Conv2d(1, 16, 5, stride=2, padding=2), body, head,
                           mean=list(MNIST_INFO.mean), std=list(MNIST_INFO.std))


def natural_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def loss_for(method: str, args: argparse.Namespace) -> Callable:
    if method == "natural":
        return natural_loss
    if method == "pgd-at":
        return PGDAdversarialLoss(args.eps, steps=args.at_steps, seed=args.seed)
    if method == "trades":
        return TRADESLoss(args.eps, steps=args.at_steps, beta=args.beta, seed=args.seed)
    if method == "yopo":
        return YOPOLoss(args.eps, m=args.yopo_m, n=args.yopo_n, alpha=args.yopo_alpha, seed=args.seed)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m experiments.adversarial_training", __doc__)
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for one subfolder per method and the summary")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and attacks")
    parser.add_argument("--epochs", type=positive_int, default=2, help="training epochs per method")
    parser.add_argument("--limit-train", type=positive_int, default=20_000, help="first N training images")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--eps", type=float, default=0.3, help="L-inf budget of training and evaluation")
    parser.add_argument("--at-steps", type=int, default=10, help="PGD steps of PGD-AT and TRADES")
    parser.add_argument("--beta", type=float, default=6.0, help="TRADES beta")
    parser.add_argument("--yopo-m", type=int, default=5, help="YOPO outer steps m")
    parser.add_argument("--yopo-n", type=int, default=3, help="YOPO inner steps n")
    parser.add_argument("--yopo-alpha", type=float, default=None, help="default 2.5 eps / (m n)")
    parser.add_argument("--warmup-epochs", type=float, default=0.0,
                        help="ramp eps linearly over this many epochs (adversarial methods)")
    parser.add_argument("--eval-samples", type=positive_int, default=1000, help="test images evaluated")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run_method(method: str, args: argparse.Namespace, train_set, test_set,
               outputs: Outputs | None = None) -> dict:
    from nets.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, train

    out = Path(args.out) / method
    report_path = out / "robustness.json"
    store = RecordStore(Path(args.out) / "records", code=code_version(REPORT_CODE))
    settings = {"method": method, **{key: value for key, value in vars(args).items() if key not in UNSTAMPED},
                "train_samples": len(train_set)}
    stored = store.get((method,), settings, label=f"{method} report")
    if stored is not None:
        return stored
    trainer = code_version(MODEL_CODE + ("attacks",))
    model_folder_is_current(out, trainer, CodeGuard(), f"model {method} ({out})")
    torch.manual_seed(args.seed)
    model = small_mnist_cnn()
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=args.lr,
                         seed=args.seed)
    loss_fn = loss_for(method, args)
    callback = None
    if method != "natural" and args.warmup_epochs > 0:
        steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
        callback = LinearEpsWarmup(loss_fn, args.eps, max(1, round(args.warmup_epochs * steps_per_epoch)),
                                   steps_per_epoch)
        if (out / CHECKPOINT_NAME).exists():  # resuming: continue the ramp where it stopped
            callback.start_at(int(load_checkpoint(out / CHECKPOINT_NAME)["epoch"]) * steps_per_epoch)
    result = train(model, train_set, test_set.subset(args.eval_samples), config, out, loss_fn=loss_fn,
                   device=args.device, resume=True, progress=not args.no_progress, on_batch_end=callback)
    model.eval()
    x, y = test_set.tensors(0, args.eval_samples, args.device)
    rows = [
        evaluate_attack(model, FGSM(args.eps), (x, y), name="FGSM"),
        evaluate_attack(model, PGD(args.eps, alpha=0.01, steps=40, seed=args.seed), (x, y), name="PGD-40"),
    ]
    report = {
        "method": method,
        "loss_fn": repr(loss_fn) if method != "natural" else "cross_entropy",
        "train_time_s": result.train_time_s,
        "clean_accuracy": rows[0]["clean_accuracy"],
        "fgsm_accuracy": rows[0]["robust_accuracy"],
        "pgd40_accuracy": rows[1]["robust_accuracy"],
        "eps": args.eps,
        "warmup_epochs": args.warmup_epochs if method != "natural" else 0.0,
        "epochs": args.epochs,
        "train_samples": len(train_set),
        "eval_samples": args.eval_samples,
        "pgd40": rows[1],
        "fgsm": rows[0],
    }
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    store.put((method,), settings, report)
    if outputs is not None:
        for path in (out / CHECKPOINT_NAME, out / "results.json", out / "model.pt", report_path):
            outputs.add(path)
    return report


def main(argv: Sequence[str] | None = None, outputs: Outputs | None = None) -> ResultTable:
    args = build_parser().parse_args(argv)
    setup(args)
    from nets.datasets import load_dataset

    options = {"verify": not args.no_verify, "download": args.download, "progress": False}
    train_set = load_dataset("mnist", "train", args.data_dir, **options).subset(args.limit_train)
    test_set = load_dataset("mnist", "test", args.data_dir, **options)
    summary = []
    for method in args.methods:
        start = time.perf_counter()
        report = run_method(method, args, train_set, test_set, outputs)
        summary.append({key: report[key] for key in ("method", "loss_fn", "train_time_s", "clean_accuracy",
                                                     "fgsm_accuracy", "pgd40_accuracy", "eps")})
        print(f"{method:8s} clean {100 * report['clean_accuracy']:6.2f}%  "
              f"FGSM {100 * report['fgsm_accuracy']:6.2f}%  PGD-40 {100 * report['pgd40_accuracy']:6.2f}%  "
              f"(train {report['train_time_s']:.0f} s, "
              f"total {time.perf_counter() - start:.0f} s)", flush=True)
    table = ResultTable(summary)
    table.to_csv(Path(args.out) / "summary.csv", digits=4)
    table.to_json(Path(args.out) / "summary.json")
    if outputs is not None:
        outputs.add(Path(args.out) / "summary.csv")
        outputs.add(Path(args.out) / "summary.json")
    return table


if __name__ == "__main__":
    sys.exit(run(main))
