"""Train a registered model on MNIST or CIFAR-10; the same command runs data-parallel under ``torchrun``.

Examples::

    python -m experiments.train --model resnet20 --dataset cifar10 --data-dir DIR --epochs 160 \\
        --batch-size 128 --optimizer sgd --lr 0.1 --weight-decay 1e-4 --schedule multistep \\
        --milestones 80 120 --out runs/resnet20 --seed 0
    torchrun --standalone --nproc_per_node 2 -m experiments.train ...   # global batch = 2 x --batch-size

Dataset-derived keyword arguments (``in_channels``, ``num_classes``, ``image_size``, ``mean``, ``std``) are
passed to the model factory when its signature names them explicitly (a ``**kwargs``-only factory gets
none); ``--step-size`` and ``--model-arg key=value``
(values parsed as Python literals, else kept as strings) are passed as given and win over derived ones.
Prints ``FINAL ...`` with test accuracy and training wall time when done.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from nets.datasets import DATASET_INFO, default_augmentation, load_dataset
from nets.registry import accepted_kwargs, available_models, build_model
from nets.training import (
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    init_distributed,
    seed_everything,
    train,
)


def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--model-arg expects key=value, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASET_INFO))
    parser.add_argument("--data-dir", default=None, help="data directory (default: $NR_DATA_DIR)")
    parser.add_argument(
        "--out", required=True, help="run directory for checkpoint.pt, results.json, model.pt"
    )
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=128, help="per process; global = this x world size")
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant")
    parser.add_argument("--milestones", type=int, nargs="*", default=[], help="epochs (multistep)")
    parser.add_argument("--gamma", type=float, default=0.1, help="multistep factor")
    parser.add_argument("--grad-clip-norm", type=float, default=None)
    parser.add_argument("--drop-last", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if present")
    parser.add_argument("--limit-train", type=int, default=None, help="use only the first N training samples")
    parser.add_argument("--limit-test", type=int, default=None, help="use only the first N test samples")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:K or auto")
    parser.add_argument("--step-size", type=float, default=None, help="passed to the model as step_size")
    parser.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-augment", action="store_true", help="disable CIFAR-10 crop+flip augmentation")
    parser.add_argument("--no-verify", action="store_true", help="skip dataset checksum verification")
    parser.add_argument("--download", action="store_true", help="download missing dataset files")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--find-unused-parameters",
        action="store_true",
        help="DDP option for models with parameters unused in some steps",
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (e.g. one registering extra models)",
    )
    return parser


def model_kwargs_for(
    name: str, dataset: str, step_size: float | None, extra: Sequence[tuple[str, Any]]
) -> dict:
    """Keyword arguments for ``build_model(name, ...)``: dataset-derived ones the factory accepts, then
    ``step_size`` and explicit ``--model-arg`` pairs."""
    info = DATASET_INFO[dataset]
    derived = {
        "in_channels": info.channels,
        "num_classes": info.num_classes,
        "image_size": [info.height, info.width],
        "mean": list(info.mean),
        "std": list(info.std),
    }
    accepted = accepted_kwargs(name) or set()  # a **kwargs-only factory gets no derived arguments
    kwargs = {key: value for key, value in derived.items() if key in accepted}
    if step_size is not None:
        kwargs["step_size"] = step_size
    kwargs.update(dict(extra))
    return kwargs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    if args.model.lower() not in available_models():
        raise SystemExit(
            f"unknown model {args.model!r}; available: {', '.join(available_models()) or '(none)'}"
        )
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    context, device = init_distributed(device_name)
    try:
        start = time.perf_counter()
        progress = not args.no_progress and context.is_main
        train_set, test_set = _load_splits(args, context, progress)
        if args.limit_train is not None:
            train_set = train_set.subset(args.limit_train)
        if args.limit_test is not None:
            test_set = test_set.subset(args.limit_test)
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.lr,
            momentum=args.momentum,
            nesterov=args.nesterov,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            milestones=tuple(args.milestones),
            gamma=args.gamma,
            seed=args.seed,
            drop_last=args.drop_last,
            eval_batch_size=args.eval_batch_size,
            grad_clip_norm=args.grad_clip_norm,
        )
        kwargs = model_kwargs_for(args.model, args.dataset, args.step_size, args.model_arg)
        seed_everything(args.seed)  # identical initial weights on every process
        model = build_model(args.model, **kwargs)
        augment = None if args.no_augment else default_augmentation(args.dataset)
        result = train(
            model,
            train_set,
            test_set,
            config,
            args.out,
            augment=augment,
            device=device,
            resume=args.resume,
            model_spec={"name": args.model.lower(), "kwargs": kwargs},
            progress=progress,
            find_unused_parameters=args.find_unused_parameters,
        )
        summary = {
            "model": args.model,
            "dataset": args.dataset,
            "epochs": args.epochs,
            "world_size": context.world_size,
            "global_batch_size": args.batch_size * context.world_size,
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "train_time_s": result.train_time_s,
            "wall_time_s": time.perf_counter() - start,
            "out": args.out,
        }
        if context.is_main:
            print("FINAL " + " ".join(f"{key}={_fmt(value)}" for key, value in summary.items()), flush=True)
        return summary
    finally:
        if context.enabled:
            torch.distributed.destroy_process_group()


def _load_splits(args: argparse.Namespace, context, progress: bool):
    """Both splits; with --download rank 0 fetches first while the other ranks wait, then they read."""

    def load():
        return tuple(
            load_dataset(
                args.dataset,
                split,
                args.data_dir,
                verify=not args.no_verify,
                download=args.download and context.is_main,
                progress=progress,
            )
            for split in ("train", "test")
        )

    if not (args.download and context.enabled):
        return load()
    splits = load() if context.is_main else None
    torch.distributed.barrier()
    return splits if splits is not None else load()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main(sys.argv[1:])
