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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from nets.datasets import DATASET_INFO, default_augmentation, load_dataset
from nets.registry import accepted_kwargs, available_models, build_model
from nets.training import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    OPTIMIZERS,
    RESULTS_NAME,
    SCHEDULES,
    TrainConfig,
    init_distributed,
    seed_everything,
    shutdown_distributed,
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
    parser = make_parser("python -m experiments.train", __doc__)
    parser.add_argument("--model", required=True, help="registered model name (see nets.available_models())")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASET_INFO), help="dataset to train on")
    add_data_arguments(parser)
    parser.add_argument(
        "--out", required=True, help="run directory for checkpoint.pt, results.json, model.pt"
    )
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
    parser.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
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


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs, validated: which model on which data, where, and how
    (:class:`~nets.training.TrainConfig`). :func:`run_training` runs it; ``experiments.train``'s command
    line and the main job (``experiments.robustness``) both build one."""

    model: str
    dataset: str
    out: Path
    config: TrainConfig
    data_dir: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    limit_train: int | None = None
    limit_test: int | None = None
    augment: bool = True
    device: str = "auto"
    resume: bool = False
    verify: bool = True
    download: bool = False
    progress: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.model.lower() not in available_models():
            raise UsageError(
                f"unknown model {self.model!r}; available: {', '.join(available_models()) or '(none)'}"
            )
        if self.dataset not in DATASET_INFO:
            raise UsageError(f"unknown dataset {self.dataset!r}; available: {sorted(DATASET_INFO)}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "model", self.model.lower())


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


def main(argv: Sequence[str] | None = None, outputs: Outputs | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup(args)
    for module in args.imports:
        importlib.import_module(module)
    if args.model.lower() not in available_models():
        raise UsageExit(
            f"unknown model {args.model!r}; available: {', '.join(available_models()) or '(none)'}"
        )
    job = TrainJob(
        model=args.model,
        dataset=args.dataset,
        out=Path(args.out),
        config=config_from_args(args),
        data_dir=args.data_dir,
        model_kwargs=model_kwargs_for(args.model, args.dataset, args.step_size, args.model_arg),
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        augment=not args.no_augment,
        device=args.device,
        resume=args.resume,
        verify=not args.no_verify,
        download=args.download,
        progress=not args.no_progress,
        find_unused_parameters=args.find_unused_parameters,
    )
    return run_training(job, outputs)


def run_training(job: TrainJob, outputs: Outputs | None = None) -> dict[str, Any]:
    """Train ``job.model`` on ``job.dataset`` into ``job.out`` (data-parallel under ``torchrun``) and return a
    summary (test accuracy, times, world size). The process group is left in order at the end."""
    context, device = init_distributed(resolve_device(job.device))
    finished = False
    try:
        start = time.perf_counter()
        progress = job.progress and context.is_main
        train_set, test_set = _load_splits(job, context, progress)
        if job.limit_train is not None:
            train_set = train_set.subset(job.limit_train)
        if job.limit_test is not None:
            test_set = test_set.subset(job.limit_test)
        kwargs = dict(job.model_kwargs)
        seed_everything(job.config.seed)  # identical initial weights on every process
        model = build_model(job.model, **kwargs)
        augment = default_augmentation(job.dataset) if job.augment else None
        result = train(
            model,
            train_set,
            test_set,
            job.config,
            job.out,
            augment=augment,
            device=device,
            resume=job.resume,
            model_spec={"name": job.model, "kwargs": kwargs},
            progress=progress,
            find_unused_parameters=job.find_unused_parameters,
        )
        if outputs is not None and context.is_main:
            for name in (CHECKPOINT_NAME, RESULTS_NAME, MODEL_NAME):
                outputs.add(job.out / name)
        summary = {
            "model": job.model,
            "dataset": job.dataset,
            "epochs": job.config.epochs,
            "world_size": context.world_size,
            "global_batch_size": job.config.batch_size * context.world_size,
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "train_time_s": result.train_time_s,
            "wall_time_s": time.perf_counter() - start,
            "out": str(job.out),
        }
        if context.is_main:
            print("FINAL " + " ".join(f"{key}={_fmt(value)}" for key, value in summary.items()), flush=True)
        finished = True
        return summary
    finally:
        if context.enabled:
            shutdown_distributed(synchronize=finished)


def _load_splits(job: TrainJob, context, progress: bool):
    """Both splits; with --download rank 0 fetches first while the other ranks wait, then they read."""

    def load():
        return tuple(
            load_dataset(
                job.dataset,
                split,
                job.data_dir,
                verify=job.verify,
                download=job.download and context.is_main,
                progress=progress,
            )
            for split in ("train", "test")
        )

    if not (job.download and context.enabled):
        return load()
    splits = load() if context.is_main else None
    torch.distributed.barrier()
    return splits if splits is not None else load()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(run(main))
