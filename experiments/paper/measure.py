"""The two kinds of measurement every artefact makes, each cached as a part of its run directory:

* :func:`protocol` — the paper's own attacks (FGSM, PGD-40, DI²-FGSM, Boundary, transfer), via
  ``attacks.sweep``: robust accuracy per (attack, ε);
* :func:`honest` — ``experiments.honest.evaluate``: the suite's per-example worst case, the paper-protocol
  PGD-40 number and the named flags (ε-sanity, masking, ...), its records and summary under
  ``OUT/evaluations/<key>/`` (shared by every artefact that asks for the same evaluation).

Under ``torchrun`` the honest evaluation's suite is shared by the processes (:func:`suite_evaluation`, which
every rank runs together). Under ``--shard K/N`` :func:`honest` evaluates shard K only
(:mod:`experiments.paper.sharding`) and returns that shard's summary uncached, and the other measurements
return NaN placeholders without computing (a shard job writes no report); without ``--shard`` an evaluation
whose shards are present is merged from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from experiments.models import TrainedModel
from experiments.paper.runtime import Context, RunDirectory, cached_json, solver_nfe
from experiments.paper.sharding import SHARDS, merged_evaluation, shard_evaluation
from experiments.paper.specs import EvalSpec
from storage.records import config_hash

if TYPE_CHECKING:
    from experiments.honest import Evaluation, EvaluationConfig


def protocol(
    run: RunDirectory,
    ctx: Context,
    entry: TrainedModel,
    attacks: Mapping[str, tuple[Callable[[float], Any], dict[str, Any]]],
    eps: Sequence[float],
    data: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
) -> tuple[list[dict[str, Any]], float]:
    """Robust accuracy of ``entry`` under each ``attacks[name] = (factory, description)`` at every ε.

    Returns rows ``{model, attack, eps, clean_accuracy, robust_accuracy, samples}`` and the seconds spent.
    """
    from attacks import sweep

    x, y = data
    if ctx.shard is not None:  # a shard job measures only its share of the honest evaluations
        nothing = {"model": entry.label, "clean_accuracy": math.nan, "robust_accuracy": math.nan,
                   "samples": int(x.shape[0])}
        return [{**nothing, "attack": name, "eps": float(e)} for name in attacks for e in eps], 0.0
    identity = {
        "model": entry.spec.key(),
        "eps": list(eps),
        "samples": int(x.shape[0]),
        "attacks": {name: description for name, (_, description) in attacks.items()},
    }

    def compute() -> list[dict[str, Any]]:
        table = sweep(
            entry.model,
            {name: factory for name, (factory, _) in attacks.items()},
            list(eps),
            (x, y),
            batch_size=batch_size,
            progress=ctx.progress,
        )
        return [
            {
                "model": entry.label,
                "attack": row["attack"],
                "eps": float(row["eps"]),
                "clean_accuracy": float(row["clean_accuracy"]),
                "robust_accuracy": float(row["robust_accuracy"]),
                "samples": int(x.shape[0]),
            }
            for row in table.rows
            if row["attack"] != "worst-case"
        ]

    return run.part(f"protocol {entry.label}", identity, counted(ctx, f"protocol {entry.label}", compute),
                    guard=ctx.guard)


def honest(
    ctx: Context,
    entry: TrainedModel,
    eps: Sequence[float],
    spec: EvalSpec,
    data: tuple[torch.Tensor, torch.Tensor],
    against: Mapping[str, TrainedModel] | None = None,
) -> tuple[dict[str, Any], float]:
    """The honest evaluation of ``entry`` at ``eps`` on ``data``: a summary dict and the seconds spent.

    Summary: ``clean``, ``worst_case`` and ``protocol`` (lists aligned with ``eps``), ``worst_case_robust``
    (per ε, one character per image: "1" robust against every attack), ``protocol_name``,
    ``flags`` (name, fired, verdict), ``fired`` (names of fired flags), ``nfe`` (ODE forward NFE),
    ``preset``, ``samples``.
    """
    against = dict(against or {})
    x, y = data
    config = spec.config(tuple(eps), ode=entry.is_ode)
    identity = {
        "model": entry.spec.key(),
        "against": {k: v.spec.key() for k, v in against.items()},
        "config": config.to_dict(),
        "samples": int(x.shape[0]),
    }

    folder = ctx.out / "evaluations" / config_hash(identity)
    models = {k: v.model for k, v in against.items()}
    if ctx.shard is not None:
        evaluation = shard_evaluation(ctx, entry, models, folder=folder, identity=identity, config=config,
                                      x=x, y=y)
        return _summary(entry, eps, spec, evaluation, x), 0.0

    def compute() -> dict[str, Any]:
        job = {"folder": folder, "identity": identity, "config": config, "x": x.cpu(), "y": y.cpu()}
        if (folder / SHARDS).is_dir():
            evaluation = merged_evaluation(entry.model, models, folder, config, x, y)
        else:
            sources = {k: v.folder for k, v in against.items()}
            ctx.team.summon("honest", model=entry.folder, against=sources, **job)
            evaluation = suite_evaluation(ctx, entry.model, models, **job)
        return _summary(entry, eps, spec, evaluation, x)

    name = f"honest evaluation of {entry.label}"
    return cached_json(folder / "summary.json", name, identity, counted(ctx, name, compute), guard=ctx.guard)


def _summary(
    entry: TrainedModel, eps: Sequence[float], spec: EvalSpec, evaluation: Evaluation, x: torch.Tensor
) -> dict[str, Any]:
    report = evaluation.report
    ((name, numbers),) = evaluation.protocol.items()
    flags = [{"name": f.name, "fired": bool(f.fired), "verdict": f.verdict} for f in report.flags]
    return {
        "eps": [float(e) for e in eps],
        "clean": float(report.clean_correct.float().mean()),
        "worst_case": [float(report.worst_case_accuracy(e)) for e in eps],
        "worst_case_robust": [
            "".join("1" if r else "0" for r in report.worst_case(e).tolist()) for e in eps
        ],
        "protocol": [float(numbers[e]) for e in eps],
        "protocol_name": name,
        "attacks": list(report.attack_names),
        "flags": flags,
        "fired": [f["name"] for f in flags if f["fired"]],
        "nfe": solver_nfe(entry.model, x, spec.batch_size),
        "solver": evaluation.solver,
        "preset": evaluation.config.preset,
        "samples": int(x.shape[0]),
        "seconds": evaluation.seconds,
    }


def suite_evaluation(
    ctx: Context,
    model: torch.nn.Module,
    against: Mapping[str, torch.nn.Module],
    *,
    folder: Path,
    identity: Mapping[str, Any],
    config: EvaluationConfig,
    x: torch.Tensor,
    y: torch.Tensor,
) -> Evaluation:
    """``experiments.honest.evaluate`` of ``model`` with its suite records under ``folder/records``, its
    batches shared by the team's processes (every one calls this together; rank 0 writes the records and
    runs the whole-set checks on the adversarials all found; each process runs the protocol PGD whole)."""
    from experiments.honest import SuiteStore, evaluate, run_evaluation_checks
    from experiments.paper.runtime import PAPER_EVALUATION_CODE
    from storage.code_version import code_version
    from storage.records import RecordStore

    records = RecordStore(folder / "records", code=code_version(PAPER_EVALUATION_CODE), guard=ctx.guard)
    x, y = x.to(ctx.device), y.to(ctx.device)
    evaluation = evaluate(
        model,
        x,
        y,
        config,
        against=against,
        store=SuiteStore(records, identity, ("suite",)),
        progress=ctx.progress and ctx.team.is_leader,
        rank=ctx.team.rank,
        world_size=ctx.team.world_size,
        checks=not ctx.team.enabled,
    )
    if ctx.team.enabled:  # the checks read the first adversarials of the whole set: every process found some
        keep = config.dependence_samples
        found = {key: (index[:keep], x_adv[:keep])
                 for key, (index, x_adv) in evaluation.report.adversarials.items()}
        evaluation.report.adversarials = _first_adversarials(ctx.team.gather(found), keep)
        if ctx.team.is_leader:
            run_evaluation_checks(model, x, y, evaluation)
    return evaluation


def _first_adversarials(
    parts: Sequence[Mapping[tuple[str, float], tuple[torch.Tensor, torch.Tensor]]], keep: int
) -> dict[tuple[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """Per (attack, ε), the first ``keep`` adversarials by sample index over every process's (as one process
    finds them, batch after batch)."""
    merged = {}
    for key in dict.fromkeys(key for part in parts for key in part):
        index = torch.cat([part[key][0] for part in parts if key in part])
        x_adv = torch.cat([part[key][1] for part in parts if key in part])
        order = index.argsort()[:keep]
        merged[key] = (index[order], x_adv[order])
    return merged


def honest_job(ctx: Context, *, model: Path, against: Mapping[str, Path], **job: Any) -> None:
    """A helper's share of the leader's honest evaluation (:func:`suite_evaluation` on the same inputs)."""
    suite_evaluation(ctx, ctx.loaded(model), {k: ctx.loaded(v) for k, v in against.items()}, **job)


def counted(ctx: Context, name: str, compute: Callable[[], Any]) -> Callable[[], Any]:
    """``compute``, noting in ``ctx.computed`` that this command computed ``name`` (not reused it)."""

    def run() -> Any:
        ctx.computed.append(name)
        return compute()

    return run


def clean_accuracy(
    run: RunDirectory, ctx: Context, entry: TrainedModel, dataset: str, batch_size: int
) -> tuple[float, int]:
    """Accuracy of ``entry`` on the whole test set of ``dataset`` (the paper's clean number is on the whole
    test set; at smoke scale on the per-epoch test images only), cached as a part; returns (accuracy,
    images)."""
    from attacks.suite import predict

    test = ctx.dataset(dataset, "test")
    limit = run.plan.evaluation.test_samples if run.plan.scale == "smoke" else None
    images = min(limit or len(test), len(test))
    if ctx.shard is not None:  # a shard job measures only its share of the honest evaluations
        return math.nan, images
    identity = {"model": entry.spec.key(), "dataset": dataset, "images": images}

    @torch.no_grad()
    def compute() -> float:
        correct = 0
        for start in range(0, images, 10 * batch_size):
            x, y = ctx.test_tensors_slice(dataset, start, min(10 * batch_size, images - start))
            correct += int((predict(entry.model, x, batch_size).argmax(1).cpu() == y.cpu()).sum())
        return correct / images

    value, _ = run.part(f"clean {entry.label}", identity, counted(ctx, f"clean {entry.label}", compute),
                        guard=ctx.guard)
    return float(value), images


def constant_image_caps(
    entry: TrainedModel, data: tuple[torch.Tensor, torch.Tensor], eps: Sequence[float], batch_size: int
) -> list[float | None]:
    """Per ε, the ε-sanity cap of ``attacks.checks``: the fraction of ``data`` classified correctly and not
    misclassified by any constant gray image inside its L∞ ball — no attack can leave more robust, so a
    number above it is an evaluation failure. ``None`` where no gray lies in any ball (no bound)."""
    from attacks.checks import constant_image_cap, gray_predictions
    from attacks.suite import predict

    x, y = data
    correct = predict(entry.model, x, batch_size).argmax(dim=1).cpu() == y.cpu()
    grays = gray_predictions(entry.model, x, batch_size)
    caps: list[float | None] = []
    for e in eps:
        possible, info = constant_image_cap(entry.model, x, y, e, "linf", batch_size, predicted=grays)
        caps.append(float((possible & correct).float().mean()) if info["covered_fraction"] > 0 else None)
    return caps


def above_cap(value: float | None, cap: float | None) -> bool:
    """True where a robust accuracy exceeds its ε-sanity cap (both fractions; a missing bound never fires)."""
    return value is not None and cap is not None and value > cap + 1e-9


def with_sanity_flag(
    fired: str, label: str, attack: str, eps: float, value: float, cap: float | None, failures: list[str]
) -> str:
    """A row's flags ``fired`` plus ``eps-sanity(<attack>)`` when its paper-attack number ``value`` exceeds
    ``cap``; the failure is appended to ``failures`` (the report's ε-sanity section)."""
    if not above_cap(value, cap):
        return fired
    failures.append(f"{label} {attack} {100 * value:.2f} > cap {100 * cap:.2f} at ε {eps:g}")
    return f"{fired} eps-sanity({attack})".strip()
