"""The evaluation suite: a list of attacks run AutoAttack-style, the per-example worst case, and checks.

For every ``eps`` the attacks run in order, each on the samples still robust after the ones before it (the
*cascade*, as in AutoAttack); a sample counts as robust at ``eps`` only if it is correctly classified and
survives every attack that ran — the **per-example worst case**. Every adversarial is re-checked by the
suite itself on the deployed model (prediction changed, ``||x_adv - x|| <= eps`` in the suite's norm,
``x_adv`` in [0, 1]), whatever the attack claims. For L-inf and L2 balls an adversarial found at a smaller
``eps`` also lies in every larger ball, so it counts there too.

Randomness is per batch: before each (attack, eps, batch) the attack is reseeded from ``(seed, attack index,
eps index, batch index)``. Hence results do not depend on how batches are spread over processes —
:func:`run_suite` with ``world_size > 1`` (e.g. under ``torchrun``) evaluates every ``world_size``-th batch
and gathers per-sample outcomes, equal to the single-process run.

Presets (:func:`preset`): ``"standard"`` = AutoAttack standard in its order: APGD-CE (100 iterations, one
restart), APGD-T (100 iterations, 9 target classes), FAB-T (100 iterations, 9 target classes), Square (5000
queries); ``"quick"`` for CPU runs = APGD-CE (50 iterations), APGD-T and FAB-T (50 iterations, 3 target
classes each), Square (1000 queries). Attacks passed in
by the caller (transfer from another model, surrogate solvers, the Boundary Attack) join the same cascade.

Checks (:mod:`attacks.checks`) turn the run into named flags with a verdict.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .apgd import APGD, APGDT
from .base import (
    Attack,
    AttackResult,
    NonFiniteLogitsError,
    WrappedAttack,
    check_inputs,
    check_labels_in_range,
    eval_mode,
    model_device,
    perturbation_size,
)
from .fab import FABT
from .progress import BatchProgress, SuiteProgress, innermost, passes_per_sample
from .square import Square

__all__ = ["AttackRecord", "SuiteAttack", "SuiteReport", "preset", "PRESETS", "run_suite", "transfer"]

KINDS = ("white-box", "score-based", "decision-based", "transfer", "protocol")


@dataclass(frozen=True)
class SuiteAttack:
    """One entry of a suite: ``factory(eps) -> Attack`` and what kind of attack it is.

    ``kind``: ``"white-box"`` (uses the deployed model's gradients), ``"score-based"`` (logits only),
    ``"decision-based"`` (labels only), ``"transfer"`` (crafted on another model or solver, evaluated on the
    deployed one). The kind decides the checks: gradient-free and transfer attacks must not beat the white-box
    ones.

    ``"protocol"``: a standalone attack of a published protocol (the paper's FGSM, DI²-FGSM, Boundary,
    PGD-40). It runs on every sample of the first ``samples`` (all when None), in the same batches as the
    clean pass, whatever the cascade did; its number (clean-correct and not fooled) is reported beside the
    worst case and is never counted in it. ``seed_of(eps index, global batch index)`` seeds each batch (a
    fresh attack per batch, so shards equal the one-process run); without it one attack per eps runs over
    the batches in order, its random stream running on as in a plain loop over the data (such a run cannot
    be sharded).
    """

    name: str
    factory: Callable[[float], Attack]
    kind: str = "white-box"
    samples: int | None = None
    seed_of: Callable[[int, int], int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.name or "@" in self.name:
            raise ValueError(f"attack name must be non-empty and free of '@', got {self.name!r}")
        if self.kind != "protocol" and (self.samples is not None or self.seed_of is not None):
            raise ValueError(f"attack {self.name!r}: samples and seed_of belong to protocol attacks")
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise ValueError(f"attack {self.name!r}: samples must be an int >= 1, got {self.samples!r}")


def _standard(norm: str, steps: int, targets: int, queries: int, seed: int) -> list[SuiteAttack]:
    return [
        SuiteAttack(f"APGD-CE-{steps}", lambda e: APGD(e, steps=steps, norm=norm, seed=seed)),
        SuiteAttack(
            f"APGD-T-{steps}x{targets}",
            lambda e: APGDT(e, steps=steps, target_classes=targets, norm=norm, seed=seed),
        ),
        SuiteAttack(
            f"FAB-T-{steps}x{targets}",
            lambda e: FABT(e, steps=steps, target_classes=targets, norm=norm, seed=seed),
        ),
        SuiteAttack(
            f"Square-{queries}",
            lambda e: Square(e, max_queries=queries, norm=norm, seed=seed),
            kind="score-based",
        ),
    ]


PRESETS: dict[str, dict[str, int]] = {
    "standard": {"steps": 100, "targets": 9, "queries": 5000},
    "quick": {"steps": 50, "targets": 3, "queries": 1000},
}


def preset(name: str, norm: str = "linf", seed: int = 0, *, steps: int | None = None,
           targets: int | None = None, queries: int | None = None) -> list[SuiteAttack]:
    """The attacks of a named preset (see the module docstring; ``"ode"`` lives in ``experiments``, which
    knows about ODE blocks). ``steps``, ``targets`` and ``queries`` override the preset's budgets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    budget = dict(PRESETS[name])
    for key, value in (("steps", steps), ("targets", targets), ("queries", queries)):
        if value is not None:
            budget[key] = value
    return _standard(norm, **budget, seed=seed)


class _Transfer(WrappedAttack):
    """Craft on ``source`` with ``inner``; the suite evaluates the result on the deployed model."""

    def __init__(self, source: nn.Module, inner: Attack) -> None:
        super().__init__(inner)
        self.source = source

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        return self.inner.run(self.source, x, y)

    def _config(self) -> dict[str, Any]:
        return {"inner": repr(self.inner), "source": type(self.source).__name__}


def transfer(name: str, source: nn.Module, inner: Callable[[float], Attack]) -> SuiteAttack:
    """A transfer attack: ``inner(eps)`` crafted on ``source`` (another model), evaluated on the deployed."""
    return SuiteAttack(name, lambda e: _Transfer(source, inner(e)), kind="transfer")


@dataclass
class AttackRecord:
    """Per-sample outcome of one attack at one ``eps`` over the whole evaluated set (``N`` samples).

    ``attacked``: the sample was still robust and so was attacked; ``fooled``: the suite verified an
    adversarial for it; ``nonfinite``: the model returned NaN/inf logits while it was attacked (counted as
    fooled: a model that breaks inside the ball is not robust there).

    A protocol record (every sample of its subset attacked) also holds ``per_sample`` values over the
    ``N`` samples: ``clean_correct`` (predicted in the protocol's own batches), the ``linf`` and ``l2`` sizes
    of ``x_adv - x`` and, for attacks that count them, ``queries`` (-1 where not attacked).
    """

    attack: str
    eps: float
    kind: str
    config: str
    attacked: Tensor
    fooled: Tensor
    nonfinite: Tensor
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, Tensor] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {
            "attack": self.attack,
            "eps": self.eps,
            "kind": self.kind,
            "config": self.config,
            "attacked": self.attacked.nonzero().squeeze(1).tolist(),
            "fooled": self.fooled.nonzero().squeeze(1).tolist(),
            "nonfinite": self.nonfinite.nonzero().squeeze(1).tolist(),
            "seconds": self.seconds,
            "stats": self.stats,
        }
        if self.per_sample:
            data["per_sample"] = {key: value.tolist() for key, value in self.per_sample.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], n: int) -> AttackRecord:
        def mask(indices: Iterable[int]) -> Tensor:
            chosen = list(indices)
            wrong = [i for i in chosen if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n]
            if wrong:
                raise ValueError(f"sample indices {wrong[:3]} are not in 0..{n - 1}")
            out = torch.zeros(n, dtype=torch.bool)
            out[chosen] = True
            return out

        per_sample = {}
        for key, values in dict(data.get("per_sample", {})).items():
            value = torch.tensor(values, dtype=torch.bool if key == "clean_correct" else torch.float64)
            if value.shape != (n,):
                raise ValueError(f"per-sample {key!r} holds {tuple(value.shape)} values, not ({n},)")
            per_sample[key] = value
        return cls(
            data["attack"],
            float(data["eps"]),
            data["kind"],
            data["config"],
            mask(data["attacked"]),
            mask(data["fooled"]),
            mask(data["nonfinite"]),
            float(data["seconds"]),
            dict(data["stats"]),
            per_sample,
        )


@dataclass
class SuiteReport:
    """Everything a run produced: clean correctness, one :class:`AttackRecord` per (attack, eps), flags."""

    eps: list[float]
    norm: str
    labels: Tensor
    clean_correct: Tensor
    records: list[AttackRecord]
    attack_names: list[str]
    clean_nonfinite: int = 0
    flags: list[Any] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Attacks of the suite that do not apply to this model (name -> why), e.g. APGD-T below 4 classes."""
    adversarials: dict[tuple[str, float], tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)
    """``(attack, eps) -> (indices, x_adv)`` of the adversarials found in this process (not serialized)."""
    protocol: list[AttackRecord] = field(default_factory=list)
    """The records of the protocol attacks (kind ``"protocol"``): beside the worst case, never in it."""

    @property
    def protocol_names(self) -> list[str]:
        return list(dict.fromkeys(record.attack for record in self.protocol))

    def protocol_record(self, attack: str, eps: float) -> AttackRecord:
        for record in self.protocol:
            if record.attack == attack and record.eps == eps:
                return record
        raise KeyError(f"no protocol record for {attack!r} at eps={eps:g}")

    def protocol_robust(self, attack: str, eps: float) -> Tensor:
        """Per-sample robustness under a protocol attack, over the samples it attacked: clean-correct (in its
        own batches) and not fooled."""
        record = self.protocol_record(attack, eps)
        clean = record.per_sample.get("clean_correct", self.clean_correct)
        return (clean & ~record.fooled)[record.attacked]

    def protocol_accuracy(self, attack: str, eps: float) -> float:
        return float(self.protocol_robust(attack, eps).float().mean())

    @property
    def samples(self) -> int:
        return int(self.clean_correct.shape[0])

    def record(self, attack: str, eps: float) -> AttackRecord:
        for record in self.records:
            if record.attack == attack and record.eps == eps:
                return record
        raise KeyError(f"no record for {attack!r} at eps={eps:g}")

    def robust_after(self, attack: str | None, eps: float) -> Tensor:
        """Per-sample robustness after the cascade up to and including ``attack`` (``None``: all attacks)."""
        robust = self.clean_correct.clone()
        for name in self.attack_names:
            robust &= ~self.record(name, eps).fooled
            if name == attack:
                break
        return robust

    def worst_case(self, eps: float) -> Tensor:
        """Per-sample worst case at ``eps``: robust against every attack at every ``eps' <= eps``."""
        robust = self.clean_correct.clone()
        for e in self.eps:
            if e <= eps:
                robust &= self.robust_after(None, e)
        return robust

    def robust_accuracy(self, attack: str | None, eps: float) -> float:
        return float(self.robust_after(attack, eps).float().mean())

    def worst_case_accuracy(self, eps: float) -> float:
        return float(self.worst_case(eps).float().mean())

    def rows(self) -> list[dict[str, Any]]:
        """One row per (attack, eps): robust accuracy after the cascade up to it, what it newly fooled, and
        its cost; then one ``worst-case`` row per ``eps``."""
        rows: list[dict[str, Any]] = []
        clean = float(self.clean_correct.float().mean())
        for eps in self.eps:
            for name in self.attack_names:
                record = self.record(name, eps)
                rows.append(
                    {
                        "attack": name,
                        "kind": record.kind,
                        "eps": eps,
                        "norm": self.norm,
                        "samples": self.samples,
                        "clean_accuracy": clean,
                        "robust_accuracy": self.robust_accuracy(name, eps),
                        "attacked": int(record.attacked.sum()),
                        "newly_fooled": int(record.fooled.sum()),
                        "nonfinite": int(record.nonfinite.sum()),
                        "seconds": record.seconds,
                        **record.stats,
                    }
                )
            rows.append(
                {
                    "attack": "worst-case",
                    "kind": "all",
                    "eps": eps,
                    "norm": self.norm,
                    "samples": self.samples,
                    "clean_accuracy": clean,
                    "robust_accuracy": self.worst_case_accuracy(eps),
                }
            )
        return rows

    def per_sample(self) -> list[dict[str, Any]]:
        """Per-sample outcomes: label, clean correctness, and per eps the first attack that fooled it."""
        out = []
        for i in range(self.samples):
            row: dict[str, Any] = {
                "index": i,
                "label": int(self.labels[i]),
                "clean_correct": bool(self.clean_correct[i]),
            }
            for eps in self.eps:
                fooled_by = next(
                    (
                        r.attack
                        for name in self.attack_names
                        for r in [self.record(name, eps)]
                        if bool(r.fooled[i])
                    ),
                    None,
                )
                row[f"fooled_by@{eps:g}"] = fooled_by
                row[f"robust@{eps:g}"] = bool(self.worst_case(eps)[i])
            out.append(row)
        return out


# -- running -------------------------------------------------------------------------------------------------
def _inapplicable(attacks: Sequence[SuiteAttack], eps: float, classes: int) -> dict[str, str]:
    """name -> reason for the attacks whose loss needs more classes than the model has; an error when that
    leaves none (a suite that attacks nothing would report the clean accuracy as robust)."""
    skipped = {}
    for entry in attacks:
        needed = getattr(entry.factory(eps), "min_classes", 2)
        if classes < needed:
            skipped[entry.name] = f"needs >= {needed} classes, the model returns {classes}"
    if len(skipped) == len(attacks):
        raise ValueError(f"no attack of the suite applies to a model with {classes} classes: {skipped}")
    return skipped


def batch_seed(seed: int, *parts: int) -> int:
    """A reproducible 62-bit seed for one (attack, eps, batch) unit of work."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _within_budget(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    distance = perturbation_size(x_adv - x, norm)
    in_box = (x_adv.flatten(1) >= 0).all(dim=1) & (x_adv.flatten(1) <= 1).all(dim=1)
    return (distance <= eps * (1 + 1e-5) + 1e-7) & in_box


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, in batches."""
    with eval_mode(model):
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _gather(mask: Tensor, world_size: int) -> Tensor:
    """OR of a per-sample boolean mask over the processes (each process filled only its own batches)."""
    if world_size == 1:
        return mask
    import torch.distributed as dist

    buffer = mask.to(torch.uint8)
    if dist.get_backend() == "nccl":
        buffer = buffer.cuda()
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
    return buffer.cpu().bool()


def _gather_max(values: Tensor, world_size: int) -> Tensor:
    """Element-wise maximum over the processes (each filled its own samples; the others hold -1)."""
    if world_size == 1:
        return values
    import torch.distributed as dist

    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def _sum_across(value: float, world_size: int) -> float:
    if world_size == 1:
        return value
    import torch.distributed as dist

    buffer = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(buffer)
    return float(buffer)


def run_suite(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: Sequence[float],
    attacks: Sequence[SuiteAttack],
    *,
    norm: str = "linf",
    batch_size: int = 250,
    seed: int = 0,
    cascade: bool = True,
    completed: Mapping[tuple[str, float], AttackRecord] | None = None,
    on_record: Callable[[AttackRecord], None] | None = None,
    progress: Callable[[int], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    first_batch: int = 0,
    monitor: SuiteProgress | None = None,
) -> SuiteReport:
    """Run ``attacks`` at every ``eps`` on ``(x, y)`` and return the :class:`SuiteReport` (no flags yet).

    ``completed`` holds records of an earlier, interrupted run (reused as they are); ``on_record`` is called
    with each new record (e.g. to write it atomically). ``progress(n)`` is called after each batch with the
    number of samples attacked. ``cascade=False`` runs every attack on all clean-correct samples (standalone
    numbers per attack; the worst case is the same AND). ``rank``/``world_size`` shard the batches.
    ``first_batch``: the global index of ``x``'s first batch when ``(x, y)`` is one shard of a larger set
    starting at sample ``first_batch * batch_size`` (seeds derive from global batch indices, so the shard's
    records equal the corresponding rows of the whole run). ``monitor``
    (:class:`attacks.progress.SuiteProgress`) follows the run in model passes: the record running and the
    work done, from inside long attacks too.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    check_inputs(x, y)
    if x.shape[0] == 0:
        raise ValueError("run_suite got an empty batch (x has 0 samples): pass at least one sample")
    eps = [float(e) for e in eps]
    if not eps or any(not math.isfinite(e) or e < 0 for e in eps):
        raise ValueError(f"eps must be a non-empty list of finite values >= 0, got {eps}")
    if len(set(eps)) != len(eps):
        raise ValueError(f"eps values must be distinct, got {eps}")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be distinct, got {names}")
    if not attacks:
        raise ValueError("the suite needs at least one attack")
    if first_batch < 0:
        raise ValueError(f"first_batch must be >= 0, got {first_batch}")
    device = torch.device(device) if device is not None else model_device(model)
    x, y = x.detach().cpu(), y.detach().cpu().long()
    n = x.shape[0]
    logits = predict(model, x.to(device), batch_size).cpu()
    check_labels_in_range(logits, y)  # an out-of-range label would count as misclassified, silently
    finite = torch.isfinite(logits).all(dim=1)
    clean_correct = finite & (logits.argmax(dim=1) == y)
    skipped = _inapplicable(attacks, eps[0], logits.shape[1])
    attacks = [entry for entry in attacks if entry.name not in skipped]
    protocols = [entry for entry in attacks if entry.kind == "protocol"]
    attacks = [entry for entry in attacks if entry.kind != "protocol"]
    streamed = [entry.name for entry in protocols if entry.seed_of is None]
    if streamed and (world_size > 1 or first_batch > 0):
        raise ValueError(f"protocol attacks {streamed} run one random stream over all batches (no seed_of) "
                         "and cannot be sharded: give them seed_of, or run them in one process")
    names = [entry.name for entry in attacks]
    report = SuiteReport(eps, norm, y, clean_correct, [], names, clean_nonfinite=int((~finite).sum()),
                         skipped=skipped)
    minimizers: dict[str, _Standalone] = {}
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    numbered = list(enumerate(batches, start=first_batch))
    completed = completed or {}
    subsets = {entry.name: _subset(n, entry.samples) for entry in protocols}
    protocol_clean = {name: clean_correct if bool(subset.all())
                      else _clean_correct(model, x, y, subset, batch_size, device)
                      for name, subset in subsets.items()}
    tracker = _Tracker(progress, monitor, batches, rank, world_size)
    tracker.start(attacks, eps, completed, clean_correct, cascade, protocols, subsets)
    protocol_runs: dict[str, _Standalone] = {}
    for e_index, e in enumerate(eps):
        robust = clean_correct.clone()
        for a_index, entry in enumerate(attacks):
            key = (entry.name, e)
            if key in completed:
                record = completed[key]
                report.records.append(record)
                robust &= ~record.fooled
                continue
            probe = _built(entry, e)
            tracker.running(entry.name, e, probe, robust if cascade else clean_correct,
                            probe.minimizes is None or entry.name not in minimizers, a_index)
            record = AttackRecord(
                entry.name,
                e,
                entry.kind,
                repr(probe),
                torch.zeros(n, dtype=torch.bool),
                torch.zeros(n, dtype=torch.bool),
                torch.zeros(n, dtype=torch.bool),
            )
            targets = robust if cascade else clean_correct
            if probe.minimizes is not None:  # eps-free: run once on every clean-correct sample, threshold
                if entry.name not in minimizers:
                    seeds = (lambda a: lambda b: batch_seed(seed, a, -1, b))(a_index)
                    minimizers[entry.name] = _run_standalone(
                        model, x, y, e, _reseeded(entry, 0.0, seeds), clean_correct, numbered, device,
                        tracker, rank, world_size, norm, probe.minimizes,
                    )
                run = minimizers[entry.name]
                record.attacked = targets.clone()
                record.fooled = targets & run.fooled_at(e)
                record.stats, record.seconds = dict(run.stats), run.seconds
            else:
                _run_bounded(
                    model,
                    x,
                    y,
                    e,
                    entry,
                    record,
                    targets,
                    numbered,
                    (seed, a_index, e_index),
                    device,
                    tracker,
                    rank,
                    world_size,
                    norm,
                    report,
                )
            report.records.append(record)
            robust &= ~record.fooled
            tracker.finished(robust)
            if on_record is not None and rank == 0:
                on_record(record)
        for entry in protocols:
            if (entry.name, e) in completed:
                report.protocol.append(completed[(entry.name, e)])
                continue
            probe = _built(entry, e)
            tracker.running(entry.name, e, probe, subsets[entry.name],
                            first_run=probe.minimizes is None or entry.name not in protocol_runs)
            if probe.minimizes is None or entry.name not in protocol_runs:
                protocol_runs[entry.name] = _run_standalone(
                    model, x, y, e, _protocol_attacks(entry, e, e_index, probe), subsets[entry.name],
                    numbered, device, tracker, rank, world_size, norm, probe.minimizes,
                )
            record = protocol_runs[entry.name].record(entry, e, repr(probe), protocol_clean[entry.name])
            report.protocol.append(record)
            if on_record is not None and rank == 0:
                on_record(record)
    return report


def _built(entry: SuiteAttack, eps: float) -> Attack:
    attack = entry.factory(eps)
    if not isinstance(attack, Attack):
        raise TypeError(f"attack {entry.name!r}: factory must return an Attack, got {type(attack).__name__}")
    return attack


def _protocol_attacks(entry: SuiteAttack, eps: float, e_index: int, probe: Attack) -> Callable[[int], Attack]:
    """The attack of each batch of a protocol entry: reseeded by its ``seed_of``, or else ``probe`` for every
    batch (one attack whose random stream runs on over the batches)."""
    if entry.seed_of is None:
        return lambda b: probe
    seed_of = entry.seed_of
    return _reseeded(entry, eps, lambda b: seed_of(e_index, b))


def _reseeded(entry: SuiteAttack, eps: float, seed_of: Callable[[int], int]) -> Callable[[int], Attack]:
    """A fresh ``entry.factory(eps)`` per global batch index ``b``, reseeded with ``seed_of(b)``."""

    def attack_for(b: int) -> Attack:
        attack = _built(entry, eps)
        attack.reseed(seed_of(b))
        return attack

    return attack_for


def _clean_correct(model: nn.Module, x: Tensor, y: Tensor, subset: Tensor, batch_size: int,
                   device: torch.device) -> Tensor:
    """Clean correctness of the samples of ``subset``, predicted in their own batches (a batch-dependent
    model, e.g. shared step control, sees what an attack on the subset sees); False elsewhere."""
    logits = predict(model, x[subset].to(device), batch_size).cpu()
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    out[subset] = torch.isfinite(logits).all(dim=1) & (logits.argmax(dim=1) == y[subset])
    return out


def _subset(n: int, samples: int | None) -> Tensor:
    """The first ``samples`` of ``n`` samples (all when None), as a mask."""
    return torch.arange(n) < (n if samples is None else min(samples, n))


@dataclass
class _Standalone:
    """One attack run on every sample of a target set: at one eps, or (a minimization attack) at every eps,
    thresholded by its per-sample ``distance`` in the suite's norm."""

    attacked: Tensor
    fooled: Tensor
    nonfinite: Tensor
    distance: Tensor | None
    sizes: dict[str, Tensor]
    stats: dict[str, float]
    seconds: float

    def fooled_at(self, eps: float) -> Tensor:
        if self.distance is None:
            return self.fooled.clone()
        return self.fooled & (self.distance <= eps * (1 + 1e-5) + 1e-7)

    def record(self, entry: SuiteAttack, eps: float, config: str, clean_correct: Tensor) -> AttackRecord:
        """The protocol record at ``eps``; ``clean_correct`` as predicted in the protocol's batches."""
        return AttackRecord(entry.name, eps, entry.kind, config, self.attacked.clone(), self.fooled_at(eps),
                            self.nonfinite.clone(), self.seconds, dict(self.stats),
                            {"clean_correct": clean_correct, **{k: v.clone() for k, v in self.sizes.items()}})


def _run_standalone(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    e: float,
    attack_for: Callable[[int], Attack],
    targets: Tensor,
    batches: list[tuple[int, range]],
    device: torch.device,
    tracker: _Tracker,
    rank: int,
    world_size: int,
    norm: str,
    minimizes: str | None,
) -> _Standalone:
    """``attack_for(global batch index)`` on every sample of ``targets``, in the suite's batches: per-sample
    outcome, perturbation sizes (``linf``, ``l2``; ``queries`` where the attack counts them; -1 where not
    attacked) and, for a minimization attack, the distance its eps-thresholds read."""
    n = x.shape[0]
    attacked = torch.zeros(n, dtype=torch.bool)
    fooled, nonfinite = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    sizes = {key: torch.full((n,), -1.0, dtype=torch.float64) for key in ("linf", "l2", "queries",
                                                                          "distance")}
    sums: dict[str, float] = {}
    started = time.perf_counter()
    for b_index, index in _shard(batches, targets, rank, world_size):
        attack = attack_for(b_index)
        xb, yb = x[index].to(device), y[index].to(device)
        attacked[index] = True
        tracker.begin_batch(attack, index.numel())
        result, wrong, bad = _attack_batch(model, attack, xb, yb)
        if result is None:
            for key in ("linf", "l2", "distance"):
                sizes[key][index] = 0.0
        else:
            delta = (result.x_adv - xb).cpu()
            sizes["linf"][index] = perturbation_size(delta, "linf").double()
            sizes["l2"][index] = perturbation_size(delta, "l2").double()
            sizes["distance"][index] = perturbation_size(delta.double(), norm)
            queries = result.stats.get("queries")
            if isinstance(queries, Tensor) and queries.shape == (index.numel(),):
                sizes["queries"][index] = queries.cpu().double()
            if minimizes is None:
                wrong &= _within_budget(result.x_adv, xb, e, norm).cpu()
            _accumulate(sums, result.stats, index.numel())
        fooled[index], nonfinite[index] = wrong, bad
        tracker.end_batch(index.numel())
    seconds = _sum_across(time.perf_counter() - started, world_size)
    attacked, fooled, nonfinite = (_gather(mask, world_size) for mask in (attacked, fooled, nonfinite))
    sizes = {key: _gather_max(value, world_size) for key, value in sizes.items()}
    distance = sizes.pop("distance")
    if not bool((sizes["queries"] >= 0).any()):
        del sizes["queries"]
    return _Standalone(attacked, fooled, nonfinite, None if minimizes is None else distance, sizes,
                       _mean_stats(sums, world_size), seconds)


class _Tracker:
    """Progress of one :func:`run_suite` call: the caller's ``progress(n)`` after each batch, and the
    ``monitor``'s work in model passes (see :mod:`attacks.progress`) for this process's batches.

    The plan holds, per (attack, eps) record to compute, the samples it will attack and its passes per
    sample. In a cascade the samples of a record not yet started are estimated from what the running
    record fools so far (and, at a larger eps, from the samples robust at the smaller one); they are exact
    once the record before has finished, and when the record starts."""

    def __init__(self, progress: Callable[[int], None] | None, monitor: SuiteProgress | None,
                 batches: list[range], rank: int, world_size: int) -> None:
        self.progress, self.monitor = progress, monitor
        self.mine = [rows for b, rows in enumerate(batches) if b % world_size == rank]
        self.batch: BatchProgress | None = None
        self.cost = 0.0
        self.planned: dict[tuple[str, float], tuple[int, float]] = {}  # (samples, passes each) per record
        self.minimizers: set[str] = set()
        self.later: list[tuple[str, float]] = []  # records after the running one whose samples it decides
        self.targets = self.attacked = self.fooled = 0

    def _count(self, mask: Tensor) -> int:
        return sum(int(mask[rows.start : rows.stop].sum()) for rows in self.mine)

    def _plan(self, key: tuple[str, float], samples: int) -> None:
        """Record ``key`` will attack ``samples``: the difference leaves the plan (negative: comes back)."""
        if key in self.planned and self.monitor is not None:
            before, cost = self.planned[key]
            if samples != before:
                self.monitor.skip((before - samples) * cost)
                self.planned[key] = (samples, cost)

    def start(self, attacks: Sequence[SuiteAttack], eps: Sequence[float],
              completed: Mapping[tuple[str, float], AttackRecord], clean_correct: Tensor,
              cascade: bool, protocols: Sequence[SuiteAttack] = (),
              subsets: Mapping[str, Tensor] | None = None) -> None:
        """Plan the work: the cascade's records on the clean-correct samples, each protocol record on its
        subset (a minimization attack once)."""
        if self.monitor is None:
            return
        self.attacks, self.eps, self.cascade = list(attacks), list(eps), cascade
        for e in eps:
            for entry in [*attacks, *protocols]:
                if (entry.name, e) in completed or entry.name in self.minimizers:
                    continue
                attack = entry.factory(e)
                if attack.minimizes is not None:
                    self.minimizers.add(entry.name)
                mask = clean_correct if entry.kind != "protocol" else (subsets or {})[entry.name]
                self.planned[(entry.name, e)] = (self._count(mask), passes_per_sample(attack))
        self.monitor.start(sum(count * cost for count, cost in self.planned.values()))

    def _cascade_after(self, a_index: int, e: float) -> list[tuple[str, float]]:
        """The records whose samples depend on the cascade at (a_index, e): the later attacks at ``e`` and,
        at each larger eps, the attacks after the first (a minimization attack, run on every clean-correct
        sample, never)."""
        if not self.cascade:
            return []
        keys = [(entry.name, e) for entry in self.attacks[a_index + 1 :]]
        keys += [(entry.name, other) for other in self.eps if other > e for entry in self.attacks[1:]]
        return [key for key in keys if key[0] not in self.minimizers]

    def running(self, name: str, e: float, attack: Attack, targets: Tensor, first_run: bool,
                a_index: int | None = None) -> None:
        """A record starts: name it; its samples are known now (and, for the cascade's ``a_index``-th
        attack, they decide the samples of the records after it)."""
        if self.monitor is None:
            return
        self.monitor.running(name, e)
        self.cost = passes_per_sample(attack)
        self.later, self.attacked, self.fooled = [], 0, 0
        if first_run and attack.minimizes is None:
            self.targets = self._count(targets)
            self._plan((name, e), self.targets)
            self.later = [] if a_index is None else self._cascade_after(a_index, e)

    def finished(self, robust: Tensor) -> None:
        """The running record is done: the records after it attack (at most, at a larger eps) the robust."""
        for key in self.later:
            self._plan(key, self._count(robust))

    def begin_batch(self, attack: Attack, size: int) -> None:
        if self.monitor is not None:
            self.batch = BatchProgress(self.monitor.advance, size * self.cost, self.monitor.skip)
            innermost(attack).on_progress = self.batch

    def end_batch(self, size: int, fooled: int | None = None) -> None:
        if self.batch is not None:
            self.batch.finish()
            self.batch = None
        if fooled is not None and self.later:  # estimate the next records from the rate fooled so far
            self.attacked, self.fooled = self.attacked + size, self.fooled + fooled
            survivors = round(self.targets * (1 - self.fooled / self.attacked))
            for key in self.later:
                self._plan(key, survivors)
        if self.progress is not None:
            self.progress(size)


def _attack_batch(
    model: nn.Module, attack: Attack, xb: Tensor, yb: Tensor
) -> tuple[AttackResult | None, Tensor, Tensor]:
    """Run one batch; return ``(result, misclassified, nonfinite)`` as verified on the deployed model."""
    try:
        result = attack.run(model, xb, yb)
    except NonFiniteLogitsError:
        every = torch.ones(xb.shape[0], dtype=torch.bool)
        return None, every, every
    with eval_mode(model), torch.no_grad():
        logits = model(result.x_adv)
    bad = ~torch.isfinite(logits).all(dim=1).cpu()
    return result, (logits.argmax(dim=1) != yb).cpu() | bad, bad


def _shard(
    batches: list[tuple[int, range]], targets: Tensor, rank: int, world_size: int
) -> Iterator[tuple[int, Tensor]]:
    """This process's batches (every ``world_size``-th of the numbered ``(global index, rows)``), as indices
    of the samples to attack in each."""
    for position, (b_index, rows) in enumerate(batches):
        if position % world_size != rank:
            continue
        index = torch.tensor(list(rows))
        index = index[targets[index]]
        if index.numel():
            yield b_index, index


def _run_bounded(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    e: float,
    entry: SuiteAttack,
    record: AttackRecord,
    targets: Tensor,
    batches: list[tuple[int, range]],
    seeds: tuple[int, int, int],
    device: torch.device,
    tracker: _Tracker,
    rank: int,
    world_size: int,
    norm: str,
    report: SuiteReport,
) -> None:
    sums: dict[str, float] = {}
    started = time.perf_counter()
    found_index, found_x = [], []
    for b_index, index in _shard(batches, targets, rank, world_size):
        attack = entry.factory(e)
        attack.reseed(batch_seed(seeds[0], seeds[1], seeds[2], b_index))
        xb, yb = x[index].to(device), y[index].to(device)
        record.attacked[index] = True
        tracker.begin_batch(attack, index.numel())
        result, fooled, bad = _attack_batch(model, attack, xb, yb)
        if result is not None:
            x_adv = result.x_adv
            fooled &= _within_budget(x_adv, xb, e, norm).cpu()
            if bool(fooled.any()):
                found_index.append(index[fooled])
                found_x.append(x_adv[fooled.to(x_adv.device)].cpu())
            _accumulate(sums, result.stats, index.numel())
        record.fooled[index] = fooled
        record.nonfinite[index] = bad
        tracker.end_batch(index.numel(), int(fooled.sum()))
    record.seconds = _sum_across(time.perf_counter() - started, world_size)
    for name in ("attacked", "fooled", "nonfinite"):
        setattr(record, name, _gather(getattr(record, name), world_size))
    record.stats = _mean_stats(sums, world_size)
    if found_index:
        report.adversarials[(entry.name, e)] = (torch.cat(found_index), torch.cat(found_x))


STAT_KEYS = ("zero_gradient_fraction", "nonfinite_gradient_fraction", "mean_queries", "objective_start",
             "objective_end")


def _mean_stats(sums: dict[str, float], world_size: int) -> dict[str, float]:
    """Per-sample means of the accumulated diagnostics, reduced over processes in one fixed-size call (every
    process takes part even when it attacked nothing)."""
    keys = ("_count", *STAT_KEYS)
    values = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64)
    present = torch.tensor([float(k in sums) for k in keys], dtype=torch.float64)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
    count = float(values[0])
    if count == 0:
        return {}
    return {k: float(v) / count for k, v, p in zip(keys[1:], values[1:], present[1:]) if p > 0}


def _accumulate(sums: dict[str, float], stats: Mapping[str, Any], count: int) -> None:
    """Sample-weighted sums of the scalar diagnostics an attack reports (gradient health, queries)."""
    sums["_count"] = sums.get("_count", 0.0) + count
    for key in ("zero_gradient_fraction", "nonfinite_gradient_fraction"):
        if key in stats:
            sums[key] = sums.get(key, 0.0) + float(stats[key]) * count
    if "queries" in stats and isinstance(stats["queries"], Tensor):
        sums["mean_queries"] = sums.get("mean_queries", 0.0) + float(stats["queries"].double().sum())
    curve = stats.get("objective_curve")
    if curve and isinstance(curve[0], list):  # one curve per restart: the first run's
        curve = curve[0]
    if curve:
        sums["objective_start"] = sums.get("objective_start", 0.0) + float(curve[0]) * count
        sums["objective_end"] = sums.get("objective_end", 0.0) + float(curve[-1]) * count
