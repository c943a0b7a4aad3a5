"""One training loop for every model: seeded, checkpointed, resumable, data-parallel under ``torchrun``.

Per step the loop does exactly ``loss = loss_fn(model, x, y); loss.backward(); optimizer.step();
scheduler.step()`` (learning-rate schedules are stepped per iteration), with ``x`` float images in [0, 1]
[B, C, H, W] and ``y`` int64 labels. ``loss_fn`` defaults to cross-entropy; adversarial training (PGD-AT,
TRADES, YOPO) plugs in here. Under DistributedDataParallel ``model`` is the DDP wrapper: generate
adversarial examples on ``unwrap_model(model)`` and compute the final training loss through ``model`` so the
gradients are averaged across processes.

After every epoch the test set is evaluated (clean accuracy and cross-entropy) and rank 0 atomically writes
``checkpoint.pt`` (model, optimizer, scheduler, epoch, data-order generator and every process's RNG states;
loads with ``torch.load(..., weights_only=True)``) and ``results.json`` (per-epoch metrics) into ``out_dir``;
at the end it also writes ``model.pt`` (weights + how to rebuild the model).

Solver statistics protocol: any submodule may implement ``pop_solver_stats() -> Mapping[str, number]``
returning counters accumulated since its previous call (e.g. ``{"nfe": 1234, "steps": 56}``) and resetting
them. The loop calls it on the outermost such modules (it does not descend into a module that implements it)
at the start of each phase to discard, and at its end to record the key-wise sums, summed over processes,
as ``train_solver_stats`` / ``test_solver_stats`` of the epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from nets.datasets import Augmentation, BatchIterator, ImageDataset

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

CHECKPOINT_NAME = "checkpoint.pt"
RESULTS_NAME = "results.json"
MODEL_NAME = "model.pt"
FORMAT_VERSION = 1

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "multistep", "cosine", "onecycle")
_RESUME_TOLERANT_FIELDS = frozenset({"eval_batch_size"})


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Default ``loss_fn``: mean cross-entropy of ``model(x)`` against ``y``."""
    return F.cross_entropy(model(x), y)


# ----------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Optimisation hyper-parameters of a run (stored in checkpoints and results; resume requires equality).

    ``batch_size`` is per process: the global batch is ``batch_size * world_size``. ``milestones`` are epochs
    at which ``multistep`` multiplies the learning rate by ``gamma`` (default: 50 % and 75 % of the epochs,
    the ResNet paper's 32k/48k of 64k iterations). ``cosine`` anneals lr -> 0 over all iterations;
    ``onecycle`` is ``torch.optim.lr_scheduler.OneCycleLR`` with ``max_lr = lr`` (torch defaults otherwise).
    """

    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    drop_last: bool = False
    eval_batch_size: int = 1000
    grad_clip_norm: float | None = None

    def __post_init__(self) -> None:
        self.optimizer = self.optimizer.lower()
        self.schedule = self.schedule.lower()
        self.milestones = tuple(int(m) for m in self.milestones)
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer='sgd' with momentum > 0")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {self.milestones}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0, got {self.grad_clip_norm}")

    def resolved_milestones(self) -> tuple[int, ...]:
        """Milestone epochs used by ``multistep`` (the defaults filled in)."""
        if self.milestones:
            return self.milestones
        return tuple(sorted({max(1, round(self.epochs * 0.5)), max(1, round(self.epochs * 0.75))}))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON / weights_only-safe dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out


def build_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, L2 weight decay), Adam (L2) or AdamW (decoupled decay) per ``config``."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Learning-rate schedule stepped once per iteration (``steps_per_epoch`` iterations per epoch)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler
    if config.schedule == "constant":
        return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if config.schedule == "multistep":
        return sched.MultiStepLR(
            optimizer, [m * steps_per_epoch for m in config.resolved_milestones()], gamma=config.gamma
        )
    if config.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0)
    cycle_momentum = config.optimizer != "sgd" or config.momentum > 0
    return sched.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, cycle_momentum=cycle_momentum)


# ----------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistributedContext:
    """Rank / world size of this process (``world_size == 1``: plain single-process training)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def distributed_context() -> DistributedContext:
    """The context of the initialised default process group, or the single-process one."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
        )
    return DistributedContext()


def init_distributed(device: str | torch.device = "cpu") -> tuple[DistributedContext, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment).

    Backend: NCCL for CUDA, gloo for CPU; rendezvous from torchrun's environment (``env://``). On CUDA
    each process uses ``cuda:LOCAL_RANK``. Without torchrun this returns the single-process context.
    """
    device = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world_size > 1 else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return distributed_context(), device


def unwrap_model(model: nn.Module) -> nn.Module:
    """The underlying module of a DistributedDataParallel (or DataParallel) wrapper; identity otherwise."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _all_gather_objects(obj: Any, context: DistributedContext) -> list[Any]:
    if not context.enabled:
        return [obj]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


# ------------------------------------------------------------------------------------- RNG and files


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain types (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, ``os.replace``: never half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as indented JSON via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint / ``model.pt`` written by :func:`train` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise RuntimeError(
            f"{str(path)!r} is not a readable checkpoint (corrupt or foreign?): {error}"
        ) from error


def load_trained_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from a run directory or its ``model.pt`` via the registry, in eval mode."""
    from nets.registry import build_model

    path = Path(path)
    state = load_checkpoint(path / MODEL_NAME if path.is_dir() else path, map_location=device)
    spec = state.get("model_spec")
    if not spec or "name" not in spec:
        raise ValueError(f"{str(path)!r} records no model_spec (name, kwargs); build the model yourself")
    model = build_model(spec["name"], **spec.get("kwargs", {}))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


# -------------------------------------------------------------------------------------- solver stats


def pop_solver_stats(model: nn.Module) -> dict[str, float]:
    """Key-wise sum of ``pop_solver_stats()`` over the outermost submodules implementing it (module doc)."""
    totals: dict[str, float] = {}
    stack = [unwrap_model(model)]
    while stack:
        module = stack.pop()
        pop = getattr(module, "pop_solver_stats", None)
        if callable(pop):
            for key, value in dict(pop()).items():
                totals[key] = totals.get(key, 0) + (
                    value.item() if isinstance(value, torch.Tensor) else value
                )
        else:
            stack.extend(module.children())
    return totals


def _sum_stats(per_rank: list[dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for stats in per_rank:
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
    return totals


# ---------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
    context: DistributedContext | None = None,
) -> dict[str, float]:
    """Clean accuracy and mean cross-entropy of ``model`` (eval mode) on ``dataset``.

    With a distributed ``context`` each process evaluates a contiguous shard (no padding, so every sample
    counts once) and the sums are all-reduced. Returns ``{"accuracy", "loss", "n"}``.
    """
    context = context or DistributedContext()
    model = unwrap_model(model)
    if device is None:
        device = next(model.parameters()).device
    n = len(dataset)
    lo, hi = n * context.rank // context.world_size, n * (context.rank + 1) // context.world_size
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    try:
        if hi > lo:
            for x, y in BatchIterator(dataset.subset(slice(lo, hi)), batch_size, device=device):
                logits = model(x)
                sums[0] += (logits.argmax(dim=1) == y).sum()
                sums[1] += F.cross_entropy(logits.float(), y, reduction="sum").double()
                sums[2] += y.numel()
    finally:
        model.train(was_training)
    correct, loss_sum, count = _all_reduce_sum(sums, context).tolist()
    return {"accuracy": correct / count, "loss": loss_sum / count, "n": int(count)}


# ---------------------------------------------------------------------------------------------- train


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
        "device": str(device),
        "torch_version": torch.__version__,
    }
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


def _check_resumable(checkpoint: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise ValueError(
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
        raise ValueError(f"cannot resume {str(path)!r} with a different config ({detail})")


def _epoch_line(record: Mapping[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"train_loss {record['train_loss']:.4f}"]
    if "test_accuracy" in record:
        parts += [f"test_acc {record['test_accuracy']:.4f}", f"test_loss {record['test_loss']:.4f}"]
    parts.append(f"time {record['epoch_time_s']:.1f}s")
    for key, value in record.get("train_solver_stats", {}).items():
        parts.append(f"train_{key} {value:g}")
    return "  ".join(parts)
