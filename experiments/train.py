"""Train a registered model on MNIST or CIFAR-10; the same command runs data-parallel under ``torchrun``.

Examples::

    python -m experiments.train --model resnet20 --dataset cifar10 --data-dir DIR --epochs 160 \\
        --batch-size 128 --optimizer sgd --lr 0.1 --weight-decay 1e-4 --schedule multistep \\
        --milestones 80 120 --out runs/resnet20 --seed 0
    torchrun --standalone --nproc_per_node 2 -m experiments.train ...   # global batch = 2 x --batch-size

``--models DIR`` trains into the model cache instead of ``--out``: the entry ``<model>-<key>`` of the model's
specification (experiments.models.ModelSpec), which the main job and ``experiments.paper`` look up, so a
model trained here serves them when they ask for the same model, recipe and data.

Dataset-derived keyword arguments (``in_channels``, ``num_classes``, ``image_size``, ``mean``, ``std``) are
passed to the model factory when its signature names them explicitly (a ``**kwargs``-only factory gets
none); ``--step-size`` and ``--model-arg key=value``
(values parsed as Python literals, else kept as strings) are passed as given and win over derived ones.
Prints ``FINAL ...`` with test accuracy and training wall time when done.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.cli import (
    Outputs,
    UsageError,
    UsageExit,
    add_data_arguments,
    make_parser,
    resolve_device,
    run,
    setup,
)
from experiments.models import ModelSpec, cache_folder, model_arg, prepare_entry, train_into
from nets.datasets import DATASET_INFO, load_dataset
from nets.registry import available_models
from nets.training import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    OPTIMIZERS,
    RESULTS_NAME,
    SCHEDULES,
    TrainConfig,
    init_distributed,
    shutdown_distributed,
)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m experiments.train", __doc__)
    parser.add_argument("--model", required=True, help="registered model name (see nets.available_models())")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASET_INFO), help="dataset to train on")
    add_data_arguments(parser)
    parser.add_argument(
        "--out", default=None, help="run directory for checkpoint.pt, results.json, model.pt (or --models)"
    )
    parser.add_argument("--models", default=None,
                        help="train into this model cache instead of --out: the entry <model>-<key> that the "
                             "main job and experiments.paper look up for the same model (a half-trained "
                             "entry resumes; one trained by other code is retrained)")
    parser.add_argument("--epochs", type=int, required=True, help="epochs to train (in total, when resuming)")
    parser.add_argument("--batch-size", type=int, default=128, help="per process; global = this x world size")
    parser.add_argument("--eval-batch-size", type=int, default=1000, help="test-set batch size")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="optimizer")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate (onecycle: its maximum)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="L2 (sgd, adam) or decoupled (adamw)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant", help="learning-rate schedule")
    parser.add_argument("--milestones", type=int, nargs="*", default=[],
                        help="epochs at which multistep multiplies the lr by --gamma (default: 50%% and 75%% "
                             "of the epochs)")
    parser.add_argument("--gamma", type=float, default=0.1, help="multistep factor")
    parser.add_argument("--grad-clip-norm", type=float, default=None, help="clip the gradient norm to this")
    parser.add_argument("--drop-last", action="store_true", help="drop the last incomplete batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and RNGs")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if present")
    parser.add_argument("--limit-train", type=int, default=None, help="use only the first N training samples")
    parser.add_argument("--limit-test", type=int, default=None, help="use only the first N test samples")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:K or auto")
    parser.add_argument("--step-size", type=float, default=None, help="passed to the model as step_size")
    parser.add_argument("--model-arg", type=model_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="extra model keyword argument (value parsed as a Python literal); repeatable")
    parser.add_argument("--no-augment", action="store_true", help="disable CIFAR-10 crop+flip augmentation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The validated :class:`TrainConfig` of parsed command-line options (an invalid value: UsageError)."""
    try:
        return TrainConfig(
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
    except ValueError as error:
        raise UsageError(f"invalid training setting: {error}") from None


def main(argv: Sequence[str] | None = None, outputs: Outputs | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup(args)
    for module in args.imports:
        importlib.import_module(module)
    if args.model.lower() not in available_models():
        raise UsageExit(
            f"unknown model {args.model!r}; available: {', '.join(available_models()) or '(none)'}"
        )
    if args.limit_test is not None and args.limit_test < 1:
        raise UsageError(f"--limit-test must be >= 1, got {args.limit_test}")
    try:
        spec = ModelSpec.of(args.model, args.dataset, config_from_args(args), step_size=args.step_size,
                            limit_train=args.limit_train, augment=not args.no_augment, **dict(args.model_arg))
    except ValueError as error:
        raise UsageError(f"invalid model or training setting: {error}") from None
    if (args.out is None) == (args.models is None):
        raise UsageError("give exactly one of --out DIR (a run directory) and --models DIR (a model cache)")
    if args.models is None:
        return run_training(spec, Path(args.out), args, outputs)
    out = cache_folder(spec, args.models)
    if os.environ.get("RANK", "0") == "0":  # under torchrun the first process prepares the entry
        prepare_entry(spec, out, None, spec.name)
    args.resume = True
    return run_training(spec, out, args, outputs)


def run_training(spec: ModelSpec, out: Path, args: argparse.Namespace,
                 outputs: Outputs | None = None) -> dict[str, Any]:
    """Train the model of ``spec`` into ``out`` (:func:`experiments.models.train_into`; data-parallel under
    ``torchrun``) and return a summary (test accuracy, times, world size). The process group is left in
    order at the end."""
    context, device = init_distributed(resolve_device(args.device))
    finished = False
    try:
        start = time.perf_counter()
        progress = not args.no_progress and context.is_main
        train_set, test_set = _load_splits(spec.dataset, args, context, progress)
        if args.limit_test is not None:
            test_set = test_set.subset(args.limit_test)
        result = train_into(spec, out, train_set, test_set, device=device, resume=args.resume,
                            progress=progress, find_unused_parameters=args.find_unused_parameters)
        if outputs is not None and context.is_main:
            for name in (CHECKPOINT_NAME, RESULTS_NAME, MODEL_NAME):
                outputs.add(out / name)
        summary = {
            "model": spec.name,
            "dataset": spec.dataset,
            "epochs": spec.train.epochs,
            "world_size": context.world_size,
            "global_batch_size": spec.train.batch_size * context.world_size,
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "train_time_s": result.train_time_s,
            "wall_time_s": time.perf_counter() - start,
            "out": str(out),
        }
        if context.is_main:
            print("FINAL " + " ".join(f"{key}={_fmt(value)}" for key, value in summary.items()), flush=True)
        finished = True
        return summary
    finally:
        if context.enabled:
            shutdown_distributed(synchronize=finished)


def _load_splits(dataset: str, args: argparse.Namespace, context, progress: bool):
    """Both splits; with --download rank 0 fetches first while the other ranks wait, then they read."""

    def load():
        return tuple(
            load_dataset(
                dataset,
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
    sys.exit(run(main))
