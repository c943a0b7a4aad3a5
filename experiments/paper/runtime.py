"""What every artefact run shares: the data, the model cache, cached result parts and the run directory.

Layout under ``--out``::

    models/<registry name>-<model key>/   one training run per ModelSpec (nets.training; resumable),
                                          shared by every artefact that asks for the same spec; code.json
                                          is the version of the code that trained it
    evaluations/<key>/                    the honest evaluation's per-(attack, ε) records and its summary
    <artefact>/plan.json                  the Plan that owns this directory (another Plan is refused)
    <artefact>/parts/<key>.json           finished measurements (a rerun reuses them)
    <artefact>/report.md, results.{csv,json}, *.png

Every cached model, part and evaluation carries the version of the code that made it
(:mod:`experiments.code_version`); one from other code is recomputed and named, or with ``--reuse-stale``
reused, named and listed in the report (:class:`~experiments.code_version.CodeGuard` in the Context).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.code_version import (
    EVALUATION_CODE,
    MODEL_CODE,
    CodeGuard,
    code_version,
    model_folder_is_current,
)
from experiments.paper.distributed import Team, per_process_batch
from experiments.paper.sharding import ShardJob
from experiments.paper.specs import ModelSpec, Plan, digest
from nets.atomic import atomic_write_text

#: what a paper measurement depends on: the evaluation code and the module that summarises it
PAPER_EVALUATION_CODE = EVALUATION_CODE + ("experiments/paper/measure.py",)


def model_code(spec: ModelSpec) -> dict[str, str]:
    """The version of the code a model of ``spec`` is trained by: stability and nets, plus attacks for an
    adversarial-training loss."""
    return code_version(MODEL_CODE + (("attacks",) if spec.train.loss != "natural" else ()))


class PaperError(Exception):
    """A failure the command reports in one line (exit code 2)."""


class RunDirectoryMismatch(PaperError):
    pass


@dataclass
class TrainedModel:
    label: str
    spec: ModelSpec
    model: nn.Module
    folder: Path
    info: dict[str, Any]

    @property
    def is_ode(self) -> bool:
        from experiments.masking import ode_blocks

        return bool(ode_blocks(self.model))


@dataclass
class Context:
    """One command's shared state: where to write, which device, the loaded datasets and models."""

    out: Path
    data_dir: str | None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    verify_data: bool = True
    download: bool = False
    guard: CodeGuard = field(default_factory=CodeGuard)
    #: the torchrun processes of this command (a team of one without torchrun); only its leader writes
    team: Team = field(default_factory=Team)
    #: ``--shard K/N``: this command evaluates shard K of every honest evaluation, and nothing else
    shard: ShardJob | None = None
    #: what this command computed (trained models, measurements), as opposed to reused from the caches
    computed: list[str] = field(default_factory=list)
    _data: dict[tuple[str, str], Any] = field(default_factory=dict)
    _models: dict[str, TrainedModel] = field(default_factory=dict)
    _loaded: dict[str, nn.Module] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------------- data
    def dataset(self, name: str, split: str):
        from nets.datasets import load_dataset

        if (name, split) not in self._data:
            self._data[(name, split)] = load_dataset(
                name, split, self.data_dir, verify=self.verify_data, download=self.download, progress=False
            )
        return self._data[(name, split)]

    def test_tensors(self, name: str, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``samples`` test images as floats in [0, 1] and their labels, on the device."""
        test = self.dataset(name, "test")
        n = min(samples, len(test))
        return test.images[:n].float().div(255).to(self.device), test.labels[:n].to(self.device)

    def test_tensors_slice(self, name: str, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Test images ``start`` … ``start + count - 1`` as floats in [0, 1] and their labels, on device."""
        test = self.dataset(name, "test")
        images, labels = test.images[start : start + count], test.labels[start : start + count]
        return images.float().div(255).to(self.device), labels.to(self.device)

    def model_records(self, models: Mapping[str, ModelSpec]) -> dict[str, dict[str, Any]]:
        """Per label: the model's spec and its training record (for results.json)."""
        return {label: {"spec": spec.to_dict(), "training": self.trained(label, spec).info}
                for label, spec in models.items()}

    def parameter_counts(self, models: Mapping[str, ModelSpec]) -> dict[str, int]:
        """Per architecture name (registry name and kwargs aside from the step size): its parameter count,
        from the models this command loaded."""
        counts = {}
        for label, spec in models.items():
            counts.setdefault(spec.name, sum(p.numel() for p in self.trained(label, spec).model.parameters()))
        return counts

    def bar(self, total: int, description: str):
        """A progress bar with ETA over an artefact's units (a no-op object without ``progress``)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, unit="unit", dynamic_ncols=True, disable=not self.progress)

    # -------------------------------------------------------------------------------------- models
    def trained(self, label: str, spec: ModelSpec, test_samples: int | None = None) -> TrainedModel:
        """The model of ``spec``: loaded from the cache, or trained there first (resumable; data-parallel
        over the team's processes, which the leader summons for it)."""
        from nets.training import MODEL_NAME, load_trained_model

        key = spec.key()
        if key in self._models:
            cached = self._models[key]
            return TrainedModel(label, spec, cached.model, cached.folder, cached.info)
        folder = self.out / "models" / f"{spec.name}-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        model_folder_is_current(folder, model_code(spec), self.guard, f"model {label} ({folder})")
        spec_path = folder / "spec.json"
        if not spec_path.is_file():
            atomic_write_text(spec_path, json.dumps(spec.to_dict(), indent=2) + "\n")
        if not (folder / MODEL_NAME).is_file():
            if self.shard is not None:
                raise PaperError(f"model {label} is not trained yet ({folder}): shard jobs evaluate trained "
                                 "models; train them first with the same command and --train-only instead of "
                                 "--shard (under torchrun to train data-parallel)")
            self.training_sets(spec, test_samples)  # loaded (or downloaded) here before the helpers read them
            self.computed.append(f"model {label}")
            if self.progress:
                processes = f" on {self.team.world_size} processes" if self.team.enabled else ""
                print(
                    f"[{label}] training {spec.name} on {spec.dataset} for {spec.train.epochs} epochs"
                    f"{processes} -> {folder}",
                    flush=True,
                )
            self.team.summon("train", spec=spec, folder=folder, test_samples=test_samples)
            self.train(spec, folder, test_samples)
        trained_model = load_trained_model(folder, device=self.device)
        info = _training_info(folder)
        entry = TrainedModel(label, spec, trained_model, folder, info)
        self._models[key] = entry
        return entry

    def training_sets(self, spec: ModelSpec, test_samples: int | None):
        """The training images of ``spec`` (its recipe's subset) and the per-epoch test images."""
        train_set = self.dataset(spec.dataset, "train")
        if spec.train.limit_train is not None:
            train_set = train_set.subset(slice(0, spec.train.limit_train))
        test_set = self.dataset(spec.dataset, "test")
        if test_samples is not None:
            test_set = test_set.subset(slice(0, test_samples))
        return train_set, test_set

    def train(self, spec: ModelSpec, folder: Path, test_samples: int | None) -> None:
        """Train ``spec`` into ``folder`` (every process of the team runs this together: nets' DDP with the
        recipe's global batch split evenly; only rank 0 writes)."""
        from nets.datasets import RandomCropFlip
        from nets.training import train

        train_set, test_set = self.training_sets(spec, test_samples)
        config = spec.train.train_config()
        if self.team.enabled:
            config = config.replace(batch_size=per_process_batch(
                config.batch_size, self.team.world_size, f"the training batch of {spec.name}"))
        torch.manual_seed(spec.train.seed)
        train(
            spec.build(),
            train_set,
            test_set,
            config,
            folder,
            loss_fn=spec.train.loss_fn(),
            augment=RandomCropFlip() if spec.train.augment else None,
            device=self.device,
            resume=True,
            progress=self.progress and self.team.is_leader,
            model_spec={"name": spec.name, "kwargs": spec.arguments},
        )

    def loaded(self, folder: Path) -> nn.Module:
        """A helper's copy of the model the leader trained or loaded into ``folder`` (read, never written)."""
        from nets.training import load_trained_model

        key = str(folder)
        if key not in self._loaded:
            self._loaded[key] = load_trained_model(folder, device=self.device)
        return self._loaded[key]


def _training_info(folder: Path) -> dict[str, Any]:
    from nets.training import RESULTS_NAME

    try:
        results = json.loads((folder / RESULTS_NAME).read_text())
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


def solver_nfe(model: nn.Module, x: torch.Tensor, batch_size: int = 250) -> dict[str, float] | None:
    """Forward NFE of a model's ODE blocks on ``x`` (shared step control): per solve and per sample."""
    from nets.training import pop_solver_stats

    if not hasattr(model, "pop_solver_stats"):
        return None
    pop_solver_stats(model)
    solves = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            model(x[start : start + batch_size])
            solves += 1
    stats = pop_solver_stats(model)
    if not stats.get("solves"):
        return None
    return {
        "nfe_per_solve": stats["nfe"] / stats["solves"],
        "nfe_per_sample": stats["sample_nfe"] / max(stats["samples"], 1),
        "batch_size": batch_size,
    }


# ------------------------------------------------------------------------------------------ run directory
class RunDirectory:
    """``OUT/<artefact>``: owned by one Plan; finished parts stored as JSON and reused."""

    def __init__(self, out: Path, plan: Plan) -> None:
        self.plan, self.folder = plan, Path(out) / plan.artefact
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / "plan.json"
        if marker.is_file():
            try:
                owner = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                owner = {}
            if owner.get("key") != plan.key():
                raise RunDirectoryMismatch(
                    f"{self.folder} holds a run of another configuration (scale "
                    f"{owner.get('plan', {}).get('scale', '?')}, key {owner.get('key')}) than this one "
                    f"(scale {plan.scale}, key {plan.key()}): pass another --out or delete that directory"
                )
        else:
            atomic_write_text(
                marker, json.dumps({"key": plan.key(), "plan": plan.to_dict()}, indent=2) + "\n"
            )

    def part(
        self,
        name: str,
        identity: Any,
        compute: Callable[[], Any],
        *,
        code: Mapping[str, str] | None = None,
        guard: CodeGuard | None = None,
    ) -> tuple[Any, float]:
        """``compute()`` once per (name, identity) and code version (``code``, default: the paper's
        evaluation code); returns (value, seconds it took when computed)."""
        return cached_json(
            self.folder / "parts" / f"{digest([name, identity])}.json",
            name,
            identity,
            compute,
            code=code,
            guard=guard,
        )


def cached_json(
    path: Path,
    name: str,
    identity: Any,
    compute: Callable[[], Any],
    *,
    code: Mapping[str, str] | None = None,
    guard: CodeGuard | None = None,
) -> tuple[Any, float]:
    """The value stored at ``path`` for ``identity``, or ``compute()`` stored there atomically first;
    returns (value, seconds the computation took).

    The entry carries ``code`` (default: the version of :data:`PAPER_EVALUATION_CODE`) and a checksum of its
    value; one made by other code, or unreadable, or edited, is recomputed and named by ``guard`` (default:
    a :class:`CodeGuard` that recomputes); with ``guard.reuse_stale`` one from other code is reused."""
    code = dict(code) if code is not None else code_version(PAPER_EVALUATION_CODE)
    guard = guard if guard is not None else CodeGuard()
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            same = stored["identity"] == json.loads(json.dumps(identity, default=str))
            intact = stored.get("value_sha256") == _value_sha256(stored["value"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            guard.log(f"recomputing {name}: unreadable ({type(error).__name__}) ({path})")
        else:
            if same and not intact:
                guard.log(f"recomputing {name}: content checksum mismatch (edited since written) ({path})")
            elif same and guard.current(f"{name} ({path})", stored.get("code"), code):
                return stored["value"], stored["seconds"]
    started = time.perf_counter()
    value = compute()
    seconds = time.perf_counter() - started
    document = {
        "name": name,
        "identity": identity,
        "code": code,
        "value_sha256": _value_sha256(value),
        "value": value,
        "seconds": seconds,
    }
    atomic_write_text(path, json.dumps(document, default=str) + "\n")
    return value, seconds


def _value_sha256(value: Any) -> str:
    """The content checksum of a cached value as it is stored (JSON, non-JSON values as their text)."""
    from experiments.records import content_sha256

    return content_sha256(json.loads(json.dumps(value, default=str)))
