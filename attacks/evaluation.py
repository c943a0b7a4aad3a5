"""Robustness evaluation: robust accuracy, success rate, perturbation norms and queries, per attack and eps.

Definitions (per sample, over the evaluated set of ``N`` samples):

* clean correct: ``argmax f(x) = y``.
* untargeted attack *succeeds* when ``argmax f(x_adv) != y`` and the perturbation is within budget: an
  eps-bounded attack is within budget by construction; the result of a minimization attack (Boundary
  Attack) counts only if ``||x_adv - x|| <= eps`` in the sweep's norm. ``robust accuracy`` = fraction
  clean-correct and not successfully attacked; ``success rate`` = successes among clean-correct samples.
* targeted (``y`` = target labels): success when ``argmax f(x_adv) = y``; success rate over all samples.

Every report also carries the attack's gradient-health counters and objective curve (white-box) or its
queries (decision-based), so gradient masking is visible: an honest white-box evaluation has PGD at least as
strong as FGSM, a black-box attack no stronger than PGD, rising objective curves and (near) zero fractions of
zero / non-finite gradients. :func:`gradient_masking_warnings` checks exactly these.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import Attack, eval_mode, model_device, require_norm
from .table import ResultTable

__all__ = ["evaluate_attack", "gradient_masking_warnings", "iterate_batches", "sweep"]

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]


def iterate_batches(data: Data, batch_size: int = 256, max_samples: int | None = None):
    """Yield ``(x, y)`` batches from an ``(x, y)`` tensor pair or an iterable of batches (``max_samples``
    samples at most)."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        inputs, labels = data
        if inputs.shape[0] != labels.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels")
        starts = range(0, len(inputs), batch_size)
        data = [(inputs[i:i + batch_size], labels[i:i + batch_size]) for i in starts]
    seen = 0
    for x, y in data:
        if max_samples is not None:
            if seen >= max_samples:
                return
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        seen += x.shape[0]
        yield x, y


def _norms(delta: Tensor) -> dict[str, Tensor]:
    flat = delta.flatten(1)
    return {"linf": flat.abs().amax(dim=1), "l2": torch.linalg.vector_norm(flat, dim=1)}


class _Accumulator:
    """Per-sample outcomes and per-batch diagnostics of one attack over a dataset."""

    def __init__(self) -> None:
        self.per_sample: dict[str, list[Tensor]] = {k: [] for k in
                                                     ("clean_correct", "fooled", "linf", "l2", "queries")}
        self.weighted: dict[str, float] = {"zero_gradient_fraction": 0.0, "nonfinite_gradient_fraction": 0.0}
        self.curve: Tensor | None = None
        self.count = 0
        self.seconds = 0.0

    def add(self, clean_correct: Tensor, fooled: Tensor, norms: dict[str, Tensor], stats: Mapping[str, Any],
            seconds: float) -> None:
        n = clean_correct.shape[0]
        self.per_sample["clean_correct"].append(clean_correct.cpu())
        self.per_sample["fooled"].append(fooled.cpu())
        self.per_sample["linf"].append(norms["linf"].cpu())
        self.per_sample["l2"].append(norms["l2"].cpu())
        if "queries" in stats:
            self.per_sample["queries"].append(stats["queries"].cpu())
        for key in self.weighted:
            self.weighted[key] += float(stats.get(key, 0.0)) * n
        curve = stats.get("objective_curve")
        if curve:
            first = torch.tensor(curve[0] if isinstance(curve[0], list) else curve, dtype=torch.float64)
            self.curve = first * n if self.curve is None else self.curve + first * n
        self.count += n
        self.seconds += seconds

    def merged(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in self.per_sample.items() if v}


def _run(model: nn.Module, attack: Attack, data: Data, device: torch.device | None, batch_size: int,
         max_samples: int | None, progress: bool, description: str) -> _Accumulator:
    device = model_device(model) if device is None else torch.device(device)
    batches = iterate_batches(data, batch_size, max_samples)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=description, leave=False)
    accumulator = _Accumulator()
    for x, y in batches:
        x, y = x.to(device), y.to(device).long()
        start = time.perf_counter()
        result = attack.run(model, x, y)
        x_adv = result.x_adv
        seconds = time.perf_counter() - start
        with eval_mode(model), torch.no_grad():
            clean_prediction = model(x).argmax(dim=1)
            adversarial_prediction = model(x_adv).argmax(dim=1)
        if attack.targeted:
            clean_correct = clean_prediction == y  # meaning: already at the target
            fooled = adversarial_prediction == y
        else:
            clean_correct = clean_prediction == y
            fooled = adversarial_prediction != y
        accumulator.add(clean_correct, fooled, _norms(x_adv - x), result.stats, seconds)
    if accumulator.count == 0:
        raise ValueError("no samples to evaluate")
    return accumulator


def _report(attack: Attack, name: str, eps: float | None, norm: str,
            acc: _Accumulator) -> tuple[dict, Tensor]:
    per = acc.merged()
    clean, fooled = per["clean_correct"], per["fooled"]
    distance = per[norm]
    within = torch.ones_like(fooled) if attack.minimizes is None or eps is None else distance <= eps + 1e-6
    success = fooled & within
    n = clean.shape[0]
    if attack.targeted:
        robust = ~success
        success_rate = float(success.float().mean())
    else:
        success = success & clean  # misclassified clean inputs are not counted as attack successes
        robust = clean & ~success
        success_rate = float(success.sum()) / max(int(clean.sum()), 1)
    changed = per["linf"] > 0
    row: dict[str, Any] = {
        "attack": name,
        "eps": eps,
        "norm": norm,
        "samples": n,
        "clean_accuracy": float(clean.float().mean()),
        "robust_accuracy": float(robust.float().mean()),
        "success_rate": success_rate,
        "mean_linf": float(per["linf"][changed].mean()) if bool(changed.any()) else 0.0,
        "max_linf": float(per["linf"].max()),
        "mean_l2": float(per["l2"][changed].mean()) if bool(changed.any()) else 0.0,
        "median_l2_success": float(per["l2"][success].median()) if bool(success.any()) else math.nan,
        "zero_gradient_fraction": acc.weighted["zero_gradient_fraction"] / acc.count,
        "nonfinite_gradient_fraction": acc.weighted["nonfinite_gradient_fraction"] / acc.count,
        "objective_start": None,
        "objective_end": None,
        "mean_queries": None,
        "max_queries": None,
        "seconds": acc.seconds,
    }
    if acc.curve is not None:
        curve = acc.curve / acc.count
        row["objective_start"], row["objective_end"] = float(curve[0]), float(curve[-1])
    if "queries" in per:
        row["mean_queries"] = float(per["queries"].double().mean())
        row["max_queries"] = int(per["queries"].max())
    return row, robust


def evaluate_attack(model: nn.Module, attack: Attack, data: Data, *, eps: float | None = None,
                    norm: str = "linf", name: str | None = None, device: torch.device | str | None = None,
                    batch_size: int = 256, max_samples: int | None = None, progress: bool = False) -> dict:
    """Run ``attack`` over ``data`` and return one report row (see the module docstring for definitions).

    ``eps`` defaults to the attack's own ``eps``; for a minimization attack it is the threshold in ``norm``.
    """
    require_norm(norm)
    eps = getattr(attack, "eps", None) if eps is None else eps
    name = name or type(attack).__name__
    accumulator = _run(model, attack, data, device, batch_size, max_samples, progress, name)
    return _report(attack, name, eps, norm, accumulator)[0]


def sweep(model: nn.Module, attacks: Mapping[str, Callable[[float], Attack]], eps_list: Sequence[float],
          data: Data, *, norm: str = "linf", device: torch.device | str | None = None, batch_size: int = 256,
          max_samples: int | None = None, progress: bool = True) -> ResultTable:
    """Evaluate every ``attacks[name](eps)`` at every ``eps`` and add a per-eps ``worst-case`` row.

    A factory returning a minimization attack (e.g. ``lambda eps: BoundaryAttack(...)``) is run once and its
    result thresholded at every ``eps`` in ``norm``. The ``worst-case`` row counts a sample robust only if it
    survives every attack at that ``eps`` (the data must then be iterated in the same order each time).
    """
    require_norm(norm)
    eps_list = [float(e) for e in eps_list]
    if not eps_list or any(not math.isfinite(e) or e < 0 for e in eps_list):
        raise ValueError(f"eps_list must be non-empty finite values >= 0, got {eps_list}")
    rows: list[dict] = []
    robust_by_eps: dict[float, list[Tensor]] = {e: [] for e in eps_list}
    clean_by_eps: dict[float, float] = {}
    for name, factory in attacks.items():
        minimization_result: _Accumulator | None = None
        for eps in eps_list:
            attack = factory(eps)
            if not isinstance(attack, Attack):
                raise TypeError(f"attacks[{name!r}] must return an Attack, got {type(attack).__name__}")
            if attack.minimizes is not None:
                if minimization_result is None:
                    minimization_result = _run(model, attack, data, device, batch_size, max_samples, progress,
                                               name)
                accumulator = minimization_result
            else:
                accumulator = _run(model, attack, data, device, batch_size, max_samples, progress,
                                   f"{name} eps={eps:g}")
            row, robust = _report(attack, name, eps, norm, accumulator)
            rows.append(row)
            robust_by_eps[eps].append(robust)
            clean_by_eps[eps] = row["clean_accuracy"]
    if len(attacks) > 1:
        for eps in eps_list:
            worst = torch.stack(robust_by_eps[eps]).all(dim=0)
            rows.append({"attack": "worst-case", "eps": eps, "norm": norm, "samples": worst.shape[0],
                         "clean_accuracy": clean_by_eps[eps], "robust_accuracy": float(worst.float().mean())})
    return ResultTable(rows)


def gradient_masking_warnings(table: ResultTable, *, tolerance: float = 0.01, iterative: str = "PGD",
                              single_step: str = "FGSM", black_box: str = "Boundary") -> list[str]:
    """Symptoms of gradient masking in a :func:`sweep` table (attack names matched by prefix).

    * a single-step attack beats the iterative one (lower robust accuracy) by more than ``tolerance``;
    * the black-box attack beats the white-box iterative attack by more than ``tolerance``;
    * more than ``tolerance`` of the white-box gradients are identically zero or non-finite;
    * the iterative attack's mean objective does not rise from its first to its last step.
    """
    warnings: list[str] = []
    by_key = {(row["attack"], row["eps"]): row for row in table.rows}
    eps_values = sorted({row["eps"] for row in table.rows if row.get("eps") is not None})

    def find(prefix: str, eps: float) -> dict | None:
        for (name, e), row in by_key.items():
            if e == eps and str(name).startswith(prefix):
                return row
        return None

    for eps in eps_values:
        strong, weak, blind = find(iterative, eps), find(single_step, eps), find(black_box, eps)
        if strong and weak and weak["robust_accuracy"] < strong["robust_accuracy"] - tolerance:
            warnings.append(f"eps={eps:g}: {weak['attack']} ({weak['robust_accuracy']:.3f}) beats "
                            f"{strong['attack']} ({strong['robust_accuracy']:.3f})")
        if strong and blind and blind["robust_accuracy"] < strong["robust_accuracy"] - tolerance:
            warnings.append(f"eps={eps:g}: black-box {blind['attack']} ({blind['robust_accuracy']:.3f}) "
                            f"beats white-box {strong['attack']} ({strong['robust_accuracy']:.3f})")
        for row in (strong, weak):
            if row is None:
                continue
            for key in ("zero_gradient_fraction", "nonfinite_gradient_fraction"):
                if (row.get(key) or 0.0) > tolerance:
                    warnings.append(f"eps={eps:g}: {row['attack']} {key} = {row[key]:.3f}")
        if strong and strong.get("objective_start") is not None and eps > 0 \
                and strong["objective_end"] <= strong["objective_start"]:
            warnings.append(f"eps={eps:g}: {strong['attack']} objective did not rise "
                            f"({strong['objective_start']:.4g} -> {strong['objective_end']:.4g})")
    return warnings
