"""Validated, frozen, hashable descriptions of what a paper artefact trains and measures.

A model is the project's one :class:`~experiments.models.ModelSpec` (architecture + dataset + training);
the scale tables write a :class:`Recipe` (the training part) and :func:`model` joins it to an architecture.
Its key is the model cache's key, so two artefacts, or an artefact and the main job, that ask for the same
model share one training run. A :class:`Plan` is one artefact at one scale: its models, its ε grids, its
evaluation budget and its attack parameters; its key guards the run directory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from experiments.models import Loss, ModelSpec
from nets.training import TrainConfig
from storage.records import config_hash

SCALES = ("smoke", "cpu", "paper")
DATASETS = ("mnist", "cifar10")


@dataclass(frozen=True)
class Recipe:
    """A scale table's training recipe: everything of a :class:`~experiments.models.ModelSpec` but the
    architecture (the optimisation, the training subset, the augmentation, the loss); :func:`model` joins
    the two."""

    train: TrainConfig
    limit_train: int | None = None
    augment: bool = False
    loss: Loss = field(default_factory=Loss)


def recipe(*, limit_train: int | None = None, augment: bool = False, loss: str = "natural",
           loss_eps: float = 0.0, loss_steps: int = 10, loss_alpha: float | None = None, beta: float = 6.0,
           yopo_m: int = 5, yopo_n: int = 3, **optimisation: Any) -> Recipe:
    """A :class:`Recipe` from the tables' flat keywords: ``optimisation`` are :class:`TrainConfig` fields
    (the paper's models evaluate the test set in batches of 500); ``loss`` and its ``loss_*``, ``beta``,
    ``yopo_*`` settings make the :class:`~experiments.models.Loss`."""
    train = TrainConfig(**{"eval_batch_size": 500, **optimisation})
    how = Loss(loss, loss_eps, loss_steps, loss_alpha, beta, yopo_m, yopo_n)
    return Recipe(train, limit_train, augment, how)


def model(name: str, dataset: str, how: Recipe, **kwargs: Any) -> ModelSpec:
    """``name`` on ``dataset`` trained by ``how`` (:meth:`ModelSpec.of`: with the dataset-derived arguments
    the factory accepts; ``kwargs`` win over them)."""
    return ModelSpec.of(name, dataset, how.train, limit_train=how.limit_train, augment=how.augment,
                        loss=how.loss, **kwargs)


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
        return config_hash(self.to_dict())
