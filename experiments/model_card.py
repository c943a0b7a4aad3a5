"""A RobustBench-style model card (``model_info.json``) for one evaluated model.

RobustBench records each model as a ``model_info`` JSON (``name``, ``architecture``, ``dataset``, ``eps``,
``clean_acc``, ``autoattack_acc``, ``external``, ``unreliable``, ``footnote``, ``number_forward_passes``;
accuracies in percent). We keep those names where they mean the same thing and add what our evaluation
knows besides: every attack's number, the worst case over the whole cascade, the flags, and the cost in
per-sample forward and backward passes (:class:`attacks.passes.PassCounter`).

Per eps, with accuracies in percent:

* ``autoattack_acc``: robust accuracy after the preset's AutoAttack attacks (the cascade's first attacks:
  APGD-CE, APGD-T, ..., Square), the number RobustBench would list;
* ``external``: the per-example worst case over every attack of the cascade (solver-aware, adjoint,
  transfer) and every smaller eps — RobustBench's field for an adaptive evaluation's number;
* ``unreliable``: ``external < autoattack_acc - 1`` (more than one point below AutoAttack), RobustBench's
  mark for a model whose AutoAttack number an adaptive evaluation broke.

``number_forward_passes`` keeps RobustBench's meaning (forward passes the *model* needs per prediction: 1 for
a deterministic model); the attacks' cost is ``attack_forward_passes`` / ``attack_backward_passes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attacks.budget import budget_preset
from attacks.suite import preset
from experiments.honest import Evaluation, EvaluationConfig

__all__ = ["UNRELIABLE_POINTS", "autoattack_names", "model_card"]

UNRELIABLE_POINTS = 1.0


def autoattack_names(config: EvaluationConfig) -> list[str]:
    """Names of the AutoAttack attacks of ``config``'s preset (what ``autoattack_acc`` is measured after)."""
    base = "quick" if config.preset in ("quick", "ode-quick") else "standard"
    build = budget_preset if config.budget else preset
    return [a.name for a in build(base, config.norm, config.seed, steps=config.steps,
                                  targets=config.target_classes, queries=config.queries)]


def _percent(value: float) -> float:
    return round(100.0 * value, 2)


def model_card(
    evaluation: Evaluation, name: str, *, architecture: str | None = None, dataset: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``model_info`` dictionary of ``evaluation`` (module docstring)."""
    config, report = evaluation.config, evaluation.report
    applied = [n for n in autoattack_names(config) if n in report.attack_names]
    last = applied[-1] if applied else None
    randomized = any(f.name == "randomness" and f.fired for f in report.flags)
    results = []
    for eps in config.eps:
        autoattack = _percent(report.robust_accuracy(last, eps)) if last else None
        external = _percent(report.worst_case_accuracy(eps))
        unreliable = autoattack is not None and external < autoattack - UNRELIABLE_POINTS
        entry: dict[str, Any] = {
            "eps": eps,
            "autoattack_acc": autoattack,
            "external": external,
            "unreliable": unreliable,
            "per_attack": {},
        }
        for attack in report.attack_names:
            record = report.record(attack, eps)
            entry["per_attack"][attack] = {
                "kind": record.kind,
                "robust_acc": _percent(report.robust_accuracy(attack, eps)),
                "newly_fooled": int(record.fooled.sum()),
                "attacked": int(record.attacked.sum()),
                "forward_passes": record.stats.get("forward_passes"),
                "backward_passes": record.stats.get("backward_passes"),
            }
        entry["protocol"] = {k: _percent(v[eps]) for k, v in evaluation.protocol.items() if eps in v}
        if unreliable:
            entry["footnote"] = (
                f"the worst case over every attack ({external:.2f}%) is {autoattack - external:.2f} points "
                f"below AutoAttack's {autoattack:.2f}%"
            )
        results.append(entry)
    return {
        "name": name,
        "architecture": architecture,
        "dataset": dataset,
        "threat_model": {"linf": "Linf", "l2": "L2"}[config.norm],
        "eps": list(config.eps),
        "samples": report.samples,
        "clean_acc": _percent(float(report.clean_correct.float().mean())),
        "unreliable": any(entry["unreliable"] for entry in results),
        "number_forward_passes": None if randomized else 1,
        "autoattack_attacks": applied,
        "preset": config.preset,
        "budget": config.budget,
        "results": results,
        "attack_forward_passes": evaluation.passes.get("forward_passes"),
        "attack_backward_passes": evaluation.passes.get("backward_passes"),
        "flags": [{"name": f.name, "fired": f.fired, "verdict": f.verdict} for f in report.flags],
        **({"skipped_attacks": dict(report.skipped)} if report.skipped else {}),
        **dict(extra or {}),
    }
