"""One model specification and one model cache: what a trained model is, and train-if-missing.

A :class:`ModelSpec` is everything a trained model depends on: the registry architecture and its keyword
arguments, the dataset, the optimisation (:class:`nets.training.TrainConfig`, seed included), the training
subset, the augmentation and the loss (:class:`Loss`). Its :meth:`~ModelSpec.key` (SHA-256 of the canonical
JSON) names its entry in a model cache, ``<cache>/<registry name>-<key>/``, so the main job
(``experiments.robustness``), ``experiments.train``, ``experiments.evaluate`` and every artefact of
``experiments.paper`` that ask for the same model share one training run::

    spec = ModelSpec.of("mnist_resnet_small", "mnist", TrainConfig(epochs=2, ...), width=2)
    entry = trained(spec, cache_folder(spec, models_dir), splits, device=device, guard=guard)

:func:`train_into` is the one training routine (seeded initial weights, the first ``limit_train`` images,
the dataset's standard augmentation, the loss); :func:`trained` loads a folder's model, training it there
first (resumably) when it is missing. A cache entry carries the version of the code that trained it
(:func:`storage.code_version.model_folder_is_current`): one trained by other code is retrained and named.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nets.datasets import DATASET_INFO, ImageDataset, default_augmentation
from nets.training import MODEL_NAME, RESULTS_NAME, TrainConfig, TrainResult
from storage.code_version import MODEL_CODE, CodeGuard, code_version, model_folder_is_current
from storage.records import config_hash

__all__ = [
    "LOSSES",
    "Loss",
    "ModelSpec",
    "TrainedModel",
    "MODELS_DIR_ENV",
    "cache_folder",
    "model_arg",
    "model_kwargs_for",
    "prepare_entry",
    "models_dir",
    "train_into",
    "trained",
    "training_info",
]

LOSSES = ("natural", "pgd-at", "trades", "yopo")
#: the file in a cache entry that holds its specification (for people; the folder name is its key)
SPEC_NAME = "spec.json"


@dataclass(frozen=True)
class Loss:
    """The training loss: ``natural`` cross-entropy, or adversarial training at ``eps`` (L∞): PGD-AT and
    TRADES (``beta``) with ``steps`` PGD steps of ``alpha``, or YOPO-``m``-``n``."""

    kind: str = "natural"
    eps: float = 0.0
    steps: int = 10
    alpha: float | None = None
    beta: float = 6.0
    yopo_m: int = 5
    yopo_n: int = 3

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.kind!r}")
        if self.kind != "natural" and not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"adversarial training needs loss eps > 0, got {self.eps}")

    @property
    def adversarial(self) -> bool:
        return self.kind != "natural"

    def loss_fn(self, seed: int):
        """The ``loss_fn`` hook of :func:`nets.training.train` (adversarial losses seeded with ``seed``)."""
        from nets.training import cross_entropy_loss

        if not self.adversarial:
            return cross_entropy_loss
        from attacks import PGDAdversarialLoss, TRADESLoss, YOPOLoss

        if self.kind == "pgd-at":
            return PGDAdversarialLoss(self.eps, self.alpha, steps=self.steps, seed=seed)
        if self.kind == "trades":
            return TRADESLoss(self.eps, self.alpha, steps=self.steps, beta=self.beta, seed=seed)
        return YOPOLoss(self.eps, m=self.yopo_m, n=self.yopo_n, alpha=self.alpha, seed=seed)


def _frozen(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in (mapping or {}).items()))


@dataclass(frozen=True)
class ModelSpec:
    """A registry architecture with keyword arguments, the dataset it is trained on, and how: ``train`` (the
    optimisation and seed), ``limit_train`` (the first N training images; None: all), ``augment`` (the
    dataset's standard augmentation, :func:`nets.datasets.default_augmentation`: crop + flip on CIFAR-10,
    none on MNIST) and ``loss``."""

    name: str
    dataset: str
    train: TrainConfig
    kwargs: tuple[tuple[str, Any], ...] = ()
    limit_train: int | None = None
    augment: bool = True
    loss: Loss = field(default_factory=Loss)

    def __post_init__(self) -> None:
        from nets.registry import accepted_kwargs, available_models

        object.__setattr__(self, "name", self.name.lower())
        if self.name not in available_models():
            raise ValueError(f"unknown model {self.name!r}; available: {', '.join(available_models())}")
        if self.dataset not in DATASET_INFO:
            raise ValueError(f"unknown dataset {self.dataset!r}; available: {sorted(DATASET_INFO)}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a nets.training.TrainConfig, got {type(self.train).__name__}")
        if not isinstance(self.kwargs, tuple):
            object.__setattr__(self, "kwargs", _frozen(self.kwargs))
        allowed = accepted_kwargs(self.name)
        unknown = set(self.arguments) - (allowed if allowed is not None else set(self.arguments))
        if unknown:
            raise ValueError(f"model {self.name!r} does not accept {sorted(unknown)}")
        if self.limit_train is not None and self.limit_train < 1:
            raise ValueError(f"limit_train must be None or >= 1, got {self.limit_train}")

    @classmethod
    def of(cls, name: str, dataset: str, train: TrainConfig, *, step_size: float | None = None,
           limit_train: int | None = None, augment: bool = True, loss: Loss | None = None,
           **kwargs: Any) -> ModelSpec:
        """``name`` on ``dataset`` with the dataset-derived arguments the factory accepts
        (:func:`model_kwargs_for`), then ``step_size`` and ``kwargs``, which win over them."""
        arguments = model_kwargs_for(name.lower(), dataset, step_size, list(kwargs.items()))
        return cls(name, dataset, train, _frozen(arguments), limit_train, augment, loss or Loss())

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def build(self) -> nn.Module:
        from nets.registry import build_model

        return build_model(self.name, **self.arguments)

    def code(self) -> dict[str, str]:
        """The version of the code that trains this model: stability and nets, plus attacks for an
        adversarial-training loss."""
        return code_version(MODEL_CODE + (("attacks",) if self.loss.adversarial else ()))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset, "kwargs": self.arguments,
                "train": self.train.to_dict(), "limit_train": self.limit_train, "augment": self.augment,
                "loss": asdict(self.loss)}

    def key(self) -> str:
        """SHA-256 (16 hex digits) of :meth:`to_dict`: the model cache's key."""
        return config_hash(self.to_dict())


#: the environment variable naming a model cache shared by every command
MODELS_DIR_ENV = "NR_MODELS_DIR"


def models_dir(out: str | Path, given: str | Path | None = None) -> Path:
    """The model cache of a command writing to ``out``: ``given`` (its ``--models``), else
    ``$NR_MODELS_DIR`` when set (one cache for every command and working directory), else ``out/models``."""
    return Path(given or os.environ.get(MODELS_DIR_ENV) or Path(out) / "models").expanduser()


def cache_folder(spec: ModelSpec, models_dir: str | Path) -> Path:
    """The entry of ``spec`` in the model cache ``models_dir``: ``<registry name>-<key>``."""
    return Path(models_dir).expanduser() / f"{spec.name}-{spec.key()}"


#: the training and test split of a dataset (the test split evaluated after each epoch; None: not evaluated)
Splits = Callable[[], tuple[ImageDataset, ImageDataset | None]]


def train_into(spec: ModelSpec, folder: str | Path, train_set: ImageDataset, test_set: ImageDataset | None, *,
               device: str | torch.device = "cpu", resume: bool = True, progress: bool = True,
               find_unused_parameters: bool = False) -> TrainResult:
    """Train the model of ``spec`` into ``folder`` (:func:`nets.training.train`; data-parallel under
    ``torchrun``): initial weights from ``spec.train.seed``, the first ``spec.limit_train`` images of
    ``train_set``, the dataset's augmentation if ``spec.augment``, and ``spec.loss``."""
    from nets.training import seed_everything, train

    if spec.limit_train is not None:
        train_set = train_set.subset(spec.limit_train)
    seed_everything(spec.train.seed)  # the same initial weights on every process
    return train(spec.build(), train_set, test_set, spec.train, folder,
                 loss_fn=spec.loss.loss_fn(spec.train.seed),
                 augment=default_augmentation(spec.dataset) if spec.augment else None, device=device,
                 resume=resume, progress=progress, model_spec={"name": spec.name, "kwargs": spec.arguments},
                 find_unused_parameters=find_unused_parameters)


@dataclass
class TrainedModel:
    """A trained model of a spec, loaded: ``label`` names it in logs, ``info`` is :func:`training_info`;
    ``computed``: this process trained it (rather than finding it trained)."""

    label: str
    spec: ModelSpec
    model: nn.Module
    folder: Path
    info: dict[str, Any]
    computed: bool = False

    @property
    def is_ode(self) -> bool:
        from experiments.masking import ode_blocks

        return bool(ode_blocks(self.model))


def trained(spec: ModelSpec, folder: str | Path, splits: Splits, *, label: str, device: torch.device,
            guard: CodeGuard | None = None, cached: bool = True, progress: bool = True) -> TrainedModel:
    """The model of ``spec`` in ``folder``: loaded, or first trained there with :func:`train_into` (resumable)
    when ``folder`` holds no model. ``cached``: ``folder`` is a model-cache entry (:func:`cache_folder`), so
    one trained by other code is retrained from scratch and named (kept and named with
    ``guard.reuse_stale``), and the spec is written beside it. ``splits()`` loads the data only when
    training."""
    from nets.training import load_trained_model

    folder = Path(folder)
    if cached:
        prepare_entry(spec, folder, guard, label)
    computed = not (folder / MODEL_NAME).is_file()
    if not computed:
        print(f"[{label}] using the trained {spec.name} in {folder}", flush=True)
    else:
        t = spec.train
        print(f"[{label}] no trained model in {folder}: training {spec.name} on {spec.dataset} "
              f"({t.epochs} epochs, {t.optimizer} lr {t.lr:g}, {t.schedule}, batch {t.batch_size}"
              f"{'' if not spec.loss.adversarial else ', ' + spec.loss.kind})", flush=True)
        train_set, test_set = splits()
        train_into(spec, folder, train_set, test_set, device=device, resume=True, progress=progress)
    model = load_trained_model(folder, device=device)
    return TrainedModel(label, spec, model, folder, training_info(folder), computed)


def prepare_entry(spec: ModelSpec, folder: Path, guard: CodeGuard | None, label: str) -> None:
    """Make the cache entry ``folder`` of ``spec`` ready to load from or train into: training files left by
    other code are deleted and named (kept and named with ``guard.reuse_stale``), the running code's
    version is stamped, and the spec is written beside them."""
    from storage.atomic import atomic_write_text

    model_folder_is_current(folder, spec.code(), guard or CodeGuard(), f"model {label} ({folder})")
    if not (folder / SPEC_NAME).is_file():
        atomic_write_text(folder / SPEC_NAME, json.dumps(spec.to_dict(), indent=2) + "\n")


def training_info(folder: str | Path) -> dict[str, Any]:
    """What a training run left in ``folder``'s results: its time, epochs, final test accuracy and the last
    epoch's solver statistics (empty when there are none)."""
    try:
        results = json.loads((Path(folder) / RESULTS_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    history = results.get("history") or []
    last = history[-1] if history else {}
    return {
        "train_time_s": results.get("train_time_s"),
        "epochs": results.get("epochs_done"),
        "final_test_accuracy": (results.get("final") or {}).get("test_accuracy"),
        "train_solver_stats_last_epoch": last.get("train_solver_stats"),
    }


def model_kwargs_for(
    name: str, dataset: str, step_size: float | None, extra: Sequence[tuple[str, Any]]
) -> dict:
    """Keyword arguments for ``build_model(name, ...)``: dataset-derived ones the factory accepts, then
    ``step_size`` and explicit ``--model-arg`` pairs."""
    from nets.registry import accepted_kwargs

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


def model_arg(text: str) -> tuple[str, Any]:
    """argparse type of ``KEY=VALUE`` (the value parsed as a Python literal, else kept as a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key.strip(), parsed
