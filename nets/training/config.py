"""Training configuration: the validated :class:`TrainConfig`, and the optimizer and learning-rate schedule
it describes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "multistep", "cosine", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyper-parameters of a run (stored in checkpoints and results; resume requires equality);
    frozen, so that a model specification holding it is a value.

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
        object.__setattr__(self, "optimizer", self.optimizer.lower())
        object.__setattr__(self, "schedule", self.schedule.lower())
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
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

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config of a :meth:`to_dict` / JSON / config-file mapping; unknown keys are an error that
        names them and the known ones."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        if "milestones" in values:
            values["milestones"] = tuple(values["milestones"])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        return self.from_dict({**self.to_dict(), **changes})

    def digest(self, length: int = 10) -> str:
        """A short stable hash of every setting (SHA-256 of the sorted JSON), e.g. to key a model cache."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


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
