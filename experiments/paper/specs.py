"""Validated, frozen, hashable descriptions of what a paper artefact trains and measures.

A :class:`ModelSpec` (architecture + dataset + :class:`TrainSpec`) names one trained model; its
:meth:`~ModelSpec.key` (SHA-256 of the canonical JSON) is the model cache's key, so two artefacts that ask
for the same model share one training run. A :class:`Plan` is one artefact at one scale: its models, its
ε grids, its evaluation budget and its attack parameters; its key guards the run directory.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

SCALES = ("smoke", "cpu", "paper")
DATASETS = ("mnist", "cifar10")
LOSSES = ("natural", "pgd-at", "trades", "yopo")


def digest(value: Any) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable value."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _frozen(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in (mapping or {}).items()))


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation of one model (mirrors ``nets.training.TrainConfig``) plus its data subset and loss.

    ``milestones``/``gamma``: the learning rate is multiplied by ``gamma`` at each milestone epoch
    (``schedule="multistep"``). ``limit_train``: the first N training images (None: all). ``loss``:
    ``natural`` cross-entropy or an adversarial-training loss at ``loss_eps`` (``loss_steps`` PGD steps of
    ``loss_alpha``; TRADES ``beta``; YOPO-m-n).
    """

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    limit_train: int | None = None
    augment: bool = False
    seed: int = 0
    loss: str = "natural"
    loss_eps: float = 0.0
    loss_steps: int = 10
    loss_alpha: float | None = None
    beta: float = 6.0
    yopo_m: int = 5
    yopo_n: int = 3

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.limit_train is not None and self.limit_train < 1:
            raise ValueError(f"limit_train must be None or >= 1, got {self.limit_train}")
        if self.loss != "natural" and not (math.isfinite(self.loss_eps) and self.loss_eps > 0):
            raise ValueError(f"adversarial training needs loss_eps > 0, got {self.loss_eps}")
        self.train_config()  # validates the optimiser fields

    def train_config(self, eval_batch_size: int = 500):
        from nets.training import TrainConfig

        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            milestones=self.milestones,
            gamma=self.gamma,
            seed=self.seed,
            eval_batch_size=eval_batch_size,
        )

    def loss_fn(self):
        """The ``loss_fn`` hook of ``nets.training.train`` for this loss."""
        from attacks import PGDAdversarialLoss, TRADESLoss, YOPOLoss
        from nets.training import cross_entropy_loss

        if self.loss == "natural":
            return cross_entropy_loss
        if self.loss == "pgd-at":
            return PGDAdversarialLoss(self.loss_eps, self.loss_alpha, steps=self.loss_steps, seed=self.seed)
        if self.loss == "trades":
            return TRADESLoss(
                self.loss_eps, self.loss_alpha, steps=self.loss_steps, beta=self.beta, seed=self.seed
            )
        return YOPOLoss(self.loss_eps, m=self.yopo_m, n=self.yopo_n, alpha=self.loss_alpha, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["milestones"] = list(self.milestones)
        return out


@dataclass(frozen=True)
class ModelSpec:
    """A registry architecture with keyword arguments, the dataset it is trained on, and how."""

    name: str
    dataset: str
    train: TrainSpec
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        from nets.registry import accepted_kwargs, get_model_factory

        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        get_model_factory(self.name)
        if not isinstance(self.kwargs, tuple):
            object.__setattr__(self, "kwargs", _frozen(self.kwargs))
        allowed = accepted_kwargs(self.name)
        unknown = set(dict(self.kwargs)) - (allowed if allowed is not None else set(dict(self.kwargs)))
        if unknown:
            raise ValueError(f"model {self.name!r} does not accept {sorted(unknown)}")

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def build(self) -> nn.Module:
        from nets.registry import build_model

        return build_model(self.name, **self.arguments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "kwargs": self.arguments,
            "train": self.train.to_dict(),
        }

    def key(self) -> str:
        return digest(self.to_dict())


def model(name: str, dataset: str, train: TrainSpec, **kwargs: Any) -> ModelSpec:
    """``name`` on ``dataset`` with the dataset-derived arguments ``experiments.train`` passes (in_channels,
    num_classes, mean, std — those the factory accepts); ``kwargs`` win over them."""
    from experiments.train import model_kwargs_for

    arguments = model_kwargs_for(name, dataset, None, list(kwargs.items()))
    return ModelSpec(name, dataset, train, _frozen(arguments))


@dataclass(frozen=True)
class EvalSpec:
    """The honest evaluation's budget (``experiments.honest.EvaluationConfig``) and the image subset.

    ``samples``: the first N test images are attacked (the whole protocol runs on them). ``protocol_steps``
    is the paper's PGD (40 steps of 0.01, uniform random start); only ``smoke`` lowers it.
    """

    samples: int
    preset: str = "quick"
    ode_preset: str = "ode-quick"
    steps: int | None = None
    target_classes: int | None = None
    queries: int | None = None
    protocol_steps: int = 40
    convergence_steps: tuple[int, ...] = (20, 100, 1000)
    convergence_samples: int = 20
    dependence_samples: int = 50
    fixed_steps: int = 20
    reference_tol: float = 1e-6
    batch_size: int = 250
    seed: int = 0
    test_samples: int | None = None  # images evaluated after each training epoch (None: the whole test set)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        self.config((0.1,), ode=True)

    def config(self, eps: tuple[float, ...], *, ode: bool):
        from experiments.honest import EvaluationConfig

        return EvaluationConfig(
            eps=tuple(float(e) for e in eps),
            preset=self.ode_preset if ode else self.preset,
            samples=self.samples,
            seed=self.seed,
            batch_size=self.batch_size,
            steps=self.steps,
            target_classes=self.target_classes,
            queries=self.queries,
            protocol_steps=self.protocol_steps,
            convergence_steps=self.convergence_steps,
            convergence_samples=self.convergence_samples,
            dependence_samples=self.dependence_samples,
            fixed_steps=self.fixed_steps,
            reference_tol=self.reference_tol,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["convergence_steps"] = list(self.convergence_steps)
        return out


@dataclass(frozen=True)
class Plan:
    """One artefact at one scale: everything that decides its numbers.

    ``models``: (label, spec) pairs; ``eps``: (dataset, ε grid) pairs, ε on [0, 1] pixels;
    ``params``: the artefact's attack parameters (name, value) pairs; ``notes``: how this scale differs
    from the paper (written into the report).
    """

    artefact: str
    scale: str
    models: tuple[tuple[str, ModelSpec], ...]
    eps: tuple[tuple[str, tuple[float, ...]], ...]
    evaluation: EvalSpec
    params: tuple[tuple[str, Any], ...] = ()
    verify_data: bool = True
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        labels = [label for label, _ in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model labels repeat: {labels}")
        for dataset, grid in self.eps:
            if dataset not in DATASETS or not grid or any(not (math.isfinite(e) and e >= 0) for e in grid):
                raise ValueError(f"bad eps grid for {dataset!r}: {grid}")

    @property
    def model_map(self) -> dict[str, ModelSpec]:
        return dict(self.models)

    @property
    def eps_map(self) -> dict[str, tuple[float, ...]]:
        return dict(self.eps)

    @property
    def param_map(self) -> dict[str, Any]:
        return dict(self.params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artefact": self.artefact,
            "scale": self.scale,
            "models": {label: spec.to_dict() for label, spec in self.models},
            "eps": {dataset: list(grid) for dataset, grid in self.eps},
            "evaluation": self.evaluation.to_dict(),
            "params": dict(self.params),
            "verify_data": self.verify_data,
        }

    def key(self) -> str:
        return digest(self.to_dict())
