"""Standalone attacks over data, as report rows: a view over :func:`attacks.run_suite`'s protocol attacks.

Definitions (per sample, over the ``N`` samples an attack ran on):

* clean correct: ``argmax f(x) = y`` (predicted in the same batches as the attack).
* an attack *succeeds* on a clean-correct sample when the suite verifies ``argmax f(x_adv) != y`` with
  ``x_adv`` in the eps-ball and in [0, 1]; the result of a minimization attack (Boundary Attack) counts at
  ``eps`` only if ``||x_adv - x|| <= eps`` in the sweep's norm. ``robust accuracy`` = fraction clean-correct
  and not successfully attacked; ``success rate`` = successes among clean-correct samples.

Every row also carries the attack's gradient-health counters and objective (white-box) or its queries
(score- and decision-based), and the sizes of its perturbations. The per-example worst case over a suite
of attacks, and the flags that say when a number is not to be trusted, come from :func:`attacks.run_suite`
and :mod:`attacks.checks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import Attack, require_norm
from .suite import AttackRecord, SuiteAttack, SuiteReport, run_suite
from .table import ResultTable

__all__ = ["evaluate_attack", "protocol_row", "protocol_rows", "sweep"]

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]


def protocol_row(report: SuiteReport, record: AttackRecord) -> dict[str, Any]:
    """One report row of a protocol record (see the module docstring for the definitions)."""
    rows = record.attacked
    clean = record.per_sample.get("clean_correct", report.clean_correct)[rows]
    success = record.fooled[rows] & clean
    robust = clean & ~success
    linf, l2 = (record.per_sample[key][rows].float() for key in ("linf", "l2"))
    changed = linf > 0
    stats = record.stats
    row: dict[str, Any] = {
        "attack": record.attack,
        "eps": record.eps,
        "norm": report.norm,
        "samples": int(rows.sum()),
        "clean_accuracy": float(clean.float().mean()),
        "robust_accuracy": float(robust.float().mean()),
        "success_rate": float(success.sum()) / max(int(clean.sum()), 1),
        "mean_linf": float(linf[changed].mean()) if bool(changed.any()) else 0.0,
        "max_linf": float(linf.max()),
        "mean_l2": float(l2[changed].mean()) if bool(changed.any()) else 0.0,
        "median_l2_success": float(l2[success].median()) if bool(success.any()) else math.nan,
        "zero_gradient_fraction": stats.get("zero_gradient_fraction", 0.0),
        "nonfinite_gradient_fraction": stats.get("nonfinite_gradient_fraction", 0.0),
        "objective_start": stats.get("objective_start"),
        "objective_end": stats.get("objective_end"),
        "mean_queries": None,
        "max_queries": None,
        "seconds": record.seconds,
    }
    if "queries" in record.per_sample:
        queries = record.per_sample["queries"][rows]
        row["mean_queries"], row["max_queries"] = float(queries.mean()), int(queries.max())
    return row


def protocol_rows(report: SuiteReport) -> list[dict[str, Any]]:
    """The rows of every protocol record of ``report``, grouped by attack, eps ascending as run."""
    return [protocol_row(report, report.protocol_record(name, e)) for name in report.protocol_names
            for e in report.eps if any(r.attack == name and r.eps == e for r in report.protocol)]


def _tensors(data: Data, max_samples: int | None) -> tuple[Tensor, Tensor]:
    """``(x, y)`` from a tensor pair or an iterable of batches, the first ``max_samples`` at most."""
    is_pair = isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)
    pairs = [data] if is_pair else list(data)
    if not pairs or any(x.shape[0] != y.shape[0] for x, y in pairs):
        raise ValueError("data must be (x, y) tensors or (x, y) batches with as many labels as inputs")
    x, y = torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])
    x, y = x[:max_samples], y[:max_samples]
    if x.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    return x, y


def sweep(model: nn.Module, attacks: Mapping[str, Callable[[float], Attack]], eps_list: Sequence[float],
          data: Data, *, norm: str = "linf", device: torch.device | str | None = None, batch_size: int = 256,
          max_samples: int | None = None, progress: bool = True) -> ResultTable:
    """Every ``attacks[name](eps)`` at every ``eps``, standalone on every sample: one row each.

    Each attack is a protocol entry of :func:`attacks.run_suite` (no per-batch reseeding: one attack per
    eps runs over the batches in order). A factory returning a minimization attack (e.g. ``lambda eps:
    BoundaryAttack(...)``) is run once and its result thresholded at every ``eps`` in ``norm``. For the
    per-example worst case over attacks, run them as a suite (:func:`attacks.run_suite`).
    """
    require_norm(norm)
    eps_list = [float(e) for e in eps_list]
    if not eps_list or any(not math.isfinite(e) or e < 0 for e in eps_list):
        raise ValueError(f"eps_list must be non-empty finite values >= 0, got {eps_list}")
    x, y = _tensors(data, max_samples)
    entries = []
    for name, factory in attacks.items():
        probe = factory(eps_list[0])
        if not isinstance(probe, Attack):
            raise TypeError(f"attacks[{name!r}] must return an Attack, got {type(probe).__name__}")
        if probe.targeted:
            raise ValueError(f"attacks[{name!r}] is targeted: a sweep measures untargeted robustness")
        entries.append(SuiteAttack(name, factory, kind="protocol"))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=x.shape[0] * len(entries) * len(eps_list), desc="sweep", leave=False)
    try:
        report = run_suite(model, x, y, eps_list, entries, norm=norm, batch_size=batch_size, device=device,
                           progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return ResultTable(protocol_rows(report))


def evaluate_attack(model: nn.Module, attack: Attack, data: Data, *, eps: float | None = None,
                    norm: str = "linf", name: str | None = None, device: torch.device | str | None = None,
                    batch_size: int = 256, max_samples: int | None = None, progress: bool = False) -> dict:
    """Run ``attack`` over ``data`` and return one report row (see the module docstring for definitions).

    ``eps`` defaults to the attack's own ``eps``; for a minimization attack it is the threshold in ``norm``.
    """
    eps = getattr(attack, "eps", None) if eps is None else eps
    if eps is None:
        raise ValueError("evaluate_attack needs eps for an attack without one (the threshold in norm)")
    table = sweep(model, {name or type(attack).__name__: lambda e: attack}, [eps], data, norm=norm,
                  device=device, batch_size=batch_size, max_samples=max_samples, progress=progress)
    return table.rows[0]
