"""What every artefact run shares: the data, the model cache, cached result parts and the run directory.

Layout under ``--out``::

    models/<registry name>-<model key>/   the model cache (experiments.models; $NR_MODELS_DIR instead when
                                          set): one training run per ModelSpec, shared by every artefact
                                          and the main job that ask for the same spec; code.json is the
                                          version of the code that trained it
    evaluations/<key>/                    the honest evaluation's per-(attack, ε) records and its summary
    <artefact>/plan.json                  the Plan that owns this directory (another Plan is refused)
    <artefact>/parts/<key>.json           finished measurements (a rerun reuses them)
    <artefact>/report.md, results.{csv,json}, *.png

Every cached model, part and evaluation carries the version of the code that made it
(:mod:`storage.code_version`); one from other code is recomputed and named, or with ``--reuse-stale``
reused, named and listed in the report (:class:`~storage.code_version.CodeGuard` in the Context).
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

from experiments.cli import UsageError
from experiments.models import ModelSpec, TrainedModel, cache_folder, models_dir, prepare_entry, trained
from experiments.paper.distributed import Team, per_process_batch
from experiments.paper.sharding import ShardJob
from experiments.paper.specs import Plan
from storage.atomic import atomic_write_text
from storage.code_version import (
    EVALUATION_CODE,
    CodeGuard,
    code_version,
)
from storage.records import RecordStore, config_hash

#: what a paper measurement depends on: the evaluation code and the module that summarises it
PAPER_EVALUATION_CODE = EVALUATION_CODE + ("experiments/paper/measure.py",)


class RunDirectoryMismatch(UsageError):
    """``OUT/<artefact>`` holds a run of another configuration (one line, exit status 2)."""


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
    #: the model cache (None: $NR_MODELS_DIR, else OUT/models; experiments.models.models_dir)
    models: Path | None = None
    #: the torchrun processes of this command (a team of one without torchrun); only its leader writes
    team: Team = field(default_factory=Team)
    #: ``--shard K/N``: this command evaluates shard K of every honest evaluation, and nothing else
    shard: ShardJob | None = None
    #: what this command computed (trained models, measurements), as opposed to reused from the caches
    computed: list[str] = field(default_factory=list)
    #: the trained models this command took from the model cache (or from an earlier artefact of the same
    #: command) instead of training them
    reused: list[str] = field(default_factory=list)
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
        return self.dataset(name, "test").tensors(0, samples, self.device)

    def test_tensors_slice(self, name: str, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Test images ``start`` … ``start + count - 1`` as floats in [0, 1] and their labels, on device."""
        return self.dataset(name, "test").tensors(start, count, self.device)

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
        """The model of ``spec`` from the model cache, trained there first (resumable) when it is missing
        (:func:`experiments.models.trained`; data-parallel over the team's processes, which the leader
        summons for it); ``test_samples``: test images evaluated after each epoch."""
        from nets.training import MODEL_NAME

        key = spec.key()
        if key in self._models:
            cached = self._models[key]
            self.reused.append(f"model {label}")
            return TrainedModel(label, spec, cached.model, cached.folder, cached.info)
        folder = cache_folder(spec, models_dir(self.out, self.models))
        prepare_entry(spec, folder, self.guard, label)
        missing = not (folder / MODEL_NAME).is_file()
        if missing and self.shard is not None:
            raise UsageError(f"model {label} is not trained yet ({folder}): shard jobs evaluate trained "
                             "models; train them first with the same command and --train-only instead of "
                             "--shard (under torchrun to train data-parallel)")
        if missing and self.team.enabled:
            print(f"[{label}] no trained model in {folder}: training {spec.name} on {spec.dataset} on "
                  f"{self.team.world_size} processes", flush=True)
            self._splits(spec, test_samples)()  # loaded (or downloaded) here before the helpers read them
            self.team.summon("train", spec=spec, folder=folder, test_samples=test_samples)
            self.train(spec, folder, test_samples)
        entry = trained(spec, folder, self._splits(spec, test_samples), label=label, device=self.device,
                        guard=self.guard, cached=False, progress=self.progress)
        (self.computed if missing else self.reused).append(f"model {label}")
        self._models[key] = entry
        return entry

    def _splits(self, spec: ModelSpec, test_samples: int | None):
        """The training split of ``spec``'s dataset and its first ``test_samples`` test images, loaded when
        called."""

        def splits():
            test = self.dataset(spec.dataset, "test")
            if test_samples is not None:
                test = test.subset(test_samples)
            return self.dataset(spec.dataset, "train"), test

        return splits

    def train(self, spec: ModelSpec, folder: Path, test_samples: int | None) -> None:
        """Train ``spec`` into ``folder`` data-parallel (every process of the team runs this together:
        nets' DDP with the recipe's global batch split evenly, B/K per process; only rank 0 writes)."""
        import dataclasses

        from experiments.models import train_into

        batch = per_process_batch(spec.train.batch_size, self.team.world_size,
                                  f"the training batch of {spec.name}")
        split = dataclasses.replace(spec, train=spec.train.replace(batch_size=batch))
        train_set, test_set = self._splits(spec, test_samples)()
        train_into(split, folder, train_set, test_set, device=self.device, resume=True,
                   progress=self.progress and self.team.is_leader)

    def loaded(self, folder: Path) -> nn.Module:
        """A helper's copy of the model the leader trained or loaded into ``folder`` (read, never written)."""
        from nets.training import load_trained_model

        key = str(folder)
        if key not in self._loaded:
            self._loaded[key] = load_trained_model(folder, device=self.device)
        return self._loaded[key]


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
            self.folder / "parts" / f"{config_hash([name, identity])}.json",
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
    """The value stored at ``path`` for ``identity``, or ``compute()`` stored there first; returns (value,
    seconds the computation took).

    The entry is a record of the project's one record store (:class:`storage.records.RecordStore`, file
    ``path``): written atomically, stamped with ``identity``, a checksum of its content and ``code``
    (default: the version of :data:`PAPER_EVALUATION_CODE`). One made with another identity is recomputed;
    one made by other code, unreadable, malformed or edited is recomputed and named by ``guard`` (default: a
    :class:`CodeGuard` that recomputes); with ``guard.reuse_stale`` one from other code is reused."""
    code = dict(code) if code is not None else code_version(PAPER_EVALUATION_CODE)
    store = RecordStore(path.parent, code=code, guard=guard)
    key, config = (path.stem,), {"name": name, "identity": _plain(identity)}
    stored = store.get(key, config, parse=lambda record: (record["value"], float(record["seconds"])),
                       label=name)
    if stored is not None:
        return stored
    started = time.perf_counter()
    value = compute()
    seconds = time.perf_counter() - started
    store.put(key, config, _plain({"value": value, "seconds": seconds}))
    return value, seconds


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (non-JSON values as their text)."""
    return json.loads(json.dumps(value, default=str))
