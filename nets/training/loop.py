"""The training loop (:func:`train`): see :mod:`nets.training` for its contract."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from nets.datasets import Augmentation, BatchIterator, ImageDataset
from nets.training.config import TrainConfig, build_optimizer, build_scheduler
from nets.training.distributed import (
    DistributedContext,
    _all_gather_objects,
    _all_reduce_sum,
    _barrier,
    distributed_context,
)
from nets.training.loading import solver_option_stamps
from nets.training.metrics import evaluate
from nets.training.solver_stats import _sum_stats, pop_solver_stats
from nets.training.state import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    MODEL_NAME,
    RESULTS_NAME,
    atomic_torch_save,
    atomic_write_json,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    seed_everything,
)
from storage.atomic import require_free_space

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

_RESUME_TOLERANT_FIELDS = frozenset({"eval_batch_size"})


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Default ``loss_fn``: mean cross-entropy of ``model(x)`` against ``y``."""
    return F.cross_entropy(model(x), y)


@dataclass
class BatchInfo:
    """Passed to ``on_batch_end`` after each optimizer step (``loss`` is detached, not synchronised)."""

    epoch: int
    step: int
    loss: torch.Tensor
    batch_size: int
    lr: float


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained (unwrapped) model and the per-epoch records."""

    model: nn.Module
    history: list[dict[str, Any]]
    out_dir: Path
    test_accuracy: float | None
    test_loss: float | None
    train_time_s: float


def _fresh_rng_seed(seed: int, rank: int) -> int:
    return seed + 1_000_003 * rank


def train(
    model: nn.Module,
    train_set: ImageDataset,
    test_set: ImageDataset | None,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    loss_fn: LossFn = cross_entropy_loss,
    augment: Augmentation | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    model_spec: Mapping[str, Any] | None = None,
    on_batch_end: Callable[[BatchInfo], None] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    find_unused_parameters: bool = False,
    log_every: int = 20,
) -> TrainResult:
    """Train ``model`` on ``train_set`` for ``config.epochs`` epochs, evaluating on ``test_set`` each epoch.

    Single process, or data-parallel when the default process group is initialised (see
    :func:`init_distributed`); only rank 0 writes files and shows progress. ``resume=True`` continues from
    ``out_dir/checkpoint.pt`` if present (the config must match) and starts fresh otherwise; without it an
    existing checkpoint is an error, so results are never overwritten by accident. Fresh runs reseed the
    global RNGs with ``config.seed`` (+ a rank offset); the data order uses its own generator seeded with
    ``config.seed`` on every rank. ``model_spec`` (``{"name": ..., "kwargs": {...}}``, JSON-serialisable)
    is stored so :func:`load_trained_model` can rebuild the model. A non-finite training loss raises
    ``FloatingPointError`` (checked every ``log_every`` steps and at the end of each epoch, before any
    checkpoint is written).
    """
    from tqdm.auto import tqdm

    context = distributed_context()
    device = torch.device(device)
    out_dir = Path(out_dir)
    spec = dict(model_spec) if model_spec is not None else None
    try:
        json.dumps(spec)
    except TypeError as error:
        raise TypeError(f"model_spec must be JSON-serialisable: {error}") from error
    if test_set is not None and test_set.image_shape != train_set.image_shape:
        raise ValueError(
            f"train images {train_set.image_shape} and test images {test_set.image_shape} differ"
        )
    checkpoint_path = out_dir / CHECKPOINT_NAME
    checkpoint = None
    if checkpoint_path.exists():
        if not resume:
            raise FileExistsError(
                f"{str(checkpoint_path)!r} exists: pass resume=True (--resume) to continue it, "
                "or use another out dir"
            )
        checkpoint = load_checkpoint(checkpoint_path)
        _check_resumable(checkpoint, config, checkpoint_path)
    _barrier(context)  # every rank has inspected out_dir before rank 0 may write to it
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    model = model.to(device)
    test_set = test_set.to(device) if test_set is not None else None  # copied once, not per epoch
    loader = BatchIterator(
        train_set,
        config.batch_size,
        shuffle=True,
        augment=augment,
        drop_last=config.drop_last,
        seed=config.seed,
        rank=context.rank,
        world_size=context.world_size,
        device=device,
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(train_set)} training samples give no batch of {config.batch_size} (drop_last)"
        )
    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config, len(loader))

    history: list[dict[str, Any]] = []
    start_epoch, train_time_s = 0, 0.0
    if checkpoint is None:
        seed_everything(_fresh_rng_seed(config.seed, context.rank))
    else:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        loader.load_state_dict(checkpoint["data"])
        start_epoch, train_time_s = int(checkpoint["epoch"]), float(checkpoint["train_time_s"])
        history = list(checkpoint["history"])
        rng_states = checkpoint["rng"]
        if len(rng_states) != context.world_size:
            raise ValueError(
                f"{str(checkpoint_path)!r} was written by {len(rng_states)} processes, now "
                f"{context.world_size}: the global batch and data sharding would change; resume with the "
                "same number of processes"
            )
        restore_rng_state(rng_states[context.rank])
        checkpoint = None  # free memory

    train_model: nn.Module = model
    if context.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    record_base = {
        "format_version": FORMAT_VERSION,
        "model_spec": spec,
        "dataset": {
            "name": train_set.name,
            "train_size": len(train_set),
            "test_size": len(test_set) if test_set is not None else 0,
        },
        "config": config.to_dict(),
        "augment": repr(augment) if augment is not None else None,
        "loss_fn": getattr(loss_fn, "__qualname__", repr(loss_fn)),
        "world_size": context.world_size,
        "global_batch_size": config.batch_size * context.world_size,
        "solver_options": solver_option_stamps(model),
        "device": str(device),
        "torch_version": torch.__version__,
    }
    if context.is_main and start_epoch < config.epochs:  # fail now, not after an epoch's work
        require_free_space(out_dir, 2 * _checkpoint_bytes(model), "the per-epoch checkpoint")
    show = progress and context.is_main
    for epoch in range(start_epoch + 1, config.epochs + 1):
        train_model.train()
        pop_solver_stats(model)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        sample_count = 0
        epoch_start = time.perf_counter()
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{config.epochs}", disable=not show, leave=False, file=sys.stderr
        )
        try:
            for step, (x, y) in enumerate(bar):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(train_model, x, y)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    raise ValueError(
                        f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', loss)}"
                    )
                loss.backward()
                if config.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach().double() * y.numel()
                sample_count += y.numel()
                if on_batch_end is not None:
                    on_batch_end(
                        BatchInfo(epoch, step, loss.detach(), y.numel(), optimizer.param_groups[0]["lr"])
                    )
                if (step + 1) % log_every == 0:
                    mean_loss = _check_finite(loss_sum, sample_count, epoch, step, context)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        finally:
            bar.close()
        _check_finite(loss_sum, sample_count, epoch, len(loader) - 1, context)
        totals = _all_reduce_sum(torch.stack([loss_sum, loss_sum.new_tensor(sample_count)]), context)
        epoch_time_s = time.perf_counter() - epoch_start
        train_time_s += epoch_time_s
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": totals[0].item() / totals[1].item(),
            "train_samples": int(totals[1].item()),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": epoch_time_s,
            "train_solver_stats": _sum_stats(_all_gather_objects(pop_solver_stats(model), context)),
        }
        if test_set is not None:
            eval_start = time.perf_counter()
            metrics = evaluate(
                model, test_set, batch_size=config.eval_batch_size, device=device, context=context
            )
            record.update(
                test_accuracy=metrics["accuracy"],
                test_loss=metrics["loss"],
                eval_time_s=time.perf_counter() - eval_start,
                test_solver_stats=_sum_stats(_all_gather_objects(pop_solver_stats(model), context)),
            )
        history.append(record)
        rng_states = _all_gather_objects(capture_rng_state(), context)
        if context.is_main:
            atomic_torch_save(
                {
                    "format_version": FORMAT_VERSION,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "data": loader.state_dict(),
                    "rng": rng_states,
                    "world_size": context.world_size,
                    "config": config.to_dict(),
                    "model_spec": spec,
                    "history": history,
                    "train_time_s": train_time_s,
                },
                checkpoint_path,
            )
            atomic_write_json(
                {
                    **record_base,
                    "status": "running",
                    "epochs_done": epoch,
                    "train_time_s": train_time_s,
                    "history": history,
                },
                out_dir / RESULTS_NAME,
            )
            if show:
                tqdm.write(_epoch_line(record, config.epochs), file=sys.stderr)
        if on_epoch_end is not None:
            on_epoch_end(record)

    del train_model  # the DDP wrapper holds the process group: drop it here, not at interpreter exit
    last = history[-1] if history else {}
    if context.is_main:
        atomic_torch_save(
            {
                "format_version": FORMAT_VERSION,
                "model": model.state_dict(),
                "model_spec": spec,
                "dataset": train_set.name,
                "config": config.to_dict(),
                "epochs": config.epochs,
            },
            out_dir / MODEL_NAME,
        )
        atomic_write_json(
            {
                **record_base,
                "status": "finished",
                "epochs_done": config.epochs,
                "train_time_s": train_time_s,
                "history": history,
                "final": {key: last.get(key) for key in ("test_accuracy", "test_loss", "train_loss")},
            },
            out_dir / RESULTS_NAME,
        )
    _barrier(context)
    return TrainResult(
        model=model,
        history=history,
        out_dir=out_dir,
        test_accuracy=last.get("test_accuracy"),
        test_loss=last.get("test_loss"),
        train_time_s=train_time_s,
    )


def _check_finite(
    loss_sum: torch.Tensor, count: int, epoch: int, step: int, context: DistributedContext
) -> float:
    flag = torch.isfinite(loss_sum).to(torch.float64).reshape(1)
    if context.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if flag.item() < 1:
        raise FloatingPointError(
            f"non-finite training loss in epoch {epoch} by step {step} (on some process)"
        )
    return loss_sum.item() / max(count, 1)


class ResumeMismatchError(ValueError):
    """``resume=True`` on a checkpoint written with another configuration (or format): a usage error."""


def _checkpoint_bytes(model: nn.Module) -> int:
    """About what one checkpoint takes: the weights and buffers, twice more for optimizer moments (Adam),
    plus 1 MiB for the rest. The atomic write holds the old and the new file at once: callers double it."""
    tensors = list(model.state_dict().values())
    weights = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return 3 * weights + 2**20


def _check_resumable(checkpoint: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise ResumeMismatchError(
            f"{str(path)!r}: checkpoint format {checkpoint.get('format_version')} != {FORMAT_VERSION}"
        )
    stored, current = checkpoint["config"], config.to_dict()
    differing = sorted(
        key
        for key in set(stored) | set(current)
        if key not in _RESUME_TOLERANT_FIELDS and stored.get(key) != current.get(key)
    )
    if differing:
        detail = ", ".join(f"{key}: {stored.get(key)!r} -> {current.get(key)!r}" for key in differing)
        raise ResumeMismatchError(
            f"cannot resume {str(path)!r} with a different config ({detail}): rerun with the checkpoint's "
            "settings, or use another --out"
        )


def _epoch_line(record: Mapping[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"train_loss {record['train_loss']:.4f}"]
    if "test_accuracy" in record:
        parts += [f"test_acc {record['test_accuracy']:.4f}", f"test_loss {record['test_loss']:.4f}"]
    parts.append(f"time {record['epoch_time_s']:.1f}s")
    for key, value in record.get("train_solver_stats", {}).items():
        parts.append(f"train_{key} {value:g}")
    return "  ".join(parts)
