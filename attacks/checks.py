"""Checks with a verdict: when a robustness number from :mod:`attacks.suite` is not to be trusted.

Each check returns a :class:`Flag` (name, fired, one-line verdict, the numbers behind it), after Carlini et
al. 2019 ("On evaluating adversarial robustness"), Tramèr et al. 2020 and AutoAttack's own flags:

* ``gradient-free-or-transfer-wins``: score-/decision-based or transfer attacks fool more than
  ``tolerance`` of the samples that survived every white-box attack — the gradients are masked.
* ``protocol-wins``: a standalone protocol attack (e.g. single-step FGSM) fools more than ``tolerance`` of
  its samples that survived every attack of the cascade (the per-example worst case) — the iterative
  attacks were masked or stopped short.
* ``gradients``: identically zero or non-finite input gradients in more than ``tolerance`` of the steps.
* ``nonfinite-logits``: the model returned NaN/inf logits (such samples are counted as not robust).
* ``more-iterations-help``: PGD with more iterations (20 -> 100 -> 1000 by default) still lowers robust
  accuracy on a subset, or finds adversarials the suite missed — the attacks have not converged.
* ``eps-monotone``: robust accuracy is not non-increasing in eps (each eps attacked on its own).
* ``eps-sanity``: where a constant gray image lies inside a sample's ball, that sample is robust only if
  the model predicts its label there; the share of such samples caps robust accuracy (e.g. MNIST at
  eps = 0.5: every image is within L-inf 0.5 of the 0.5-gray image). A number above the cap is an
  evaluation failure, not robustness.
* ``batch-dependence``: predictions that change when an input is evaluated alone instead of in its batch
  (ODE solvers with step control shared by the batch do this).
* ``randomness``: logits differ between two identical calls — use expectation over transformation.
* the six indicators of attack failure of Pintor et al. 2022 (:mod:`attacks.indicators`):
  ``unavailable-gradients``, ``unstable-predictions``, ``silent-success``, ``incomplete-optimisation``,
  ``transfer-failure``, ``unconstrained-attack-failure``; for models with ODE blocks also ``nfe-spread`` and
  ``gradient-agreement`` (:mod:`attacks.solver_indicators`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import model_device, perturbation_size
from .flags import Flag
from .indicators import attack_failure_flags
from .pgd import PGD
from .solver_indicators import solver_flags
from .suite import SuiteAttack, SuiteReport, batch_seed, predict, run_suite

__all__ = [
    "Flag",
    "run_checks",
    "constant_image_cap",
    "batch_dependence",
    "randomness",
    "iteration_convergence",
    "pgd_robust",
    "report_flags",
]

GRAYS = tuple(i / 20 for i in range(21))


def report_flags(report: SuiteReport, tolerance: float = 0.01) -> list[Flag]:
    """The checks that need only the report: gradient-free/transfer wins, protocol wins, gradients,
    non-finite logits and monotonicity in eps."""
    return [
        _gradient_free_wins(report, tolerance),
        _protocol_wins(report, tolerance),
        _gradient_health(report, tolerance),
        _nonfinite_logits(report),
        _eps_monotone(report),
    ]


def _gradient_free_wins(report: SuiteReport, tolerance: float) -> Flag:
    kind = {record.attack: record.kind for record in report.records}
    white = [name for name in report.attack_names if kind.get(name) == "white-box"]
    others = [name for name in report.attack_names if name not in white]
    if not white or not others:
        return Flag(
            "gradient-free-or-transfer-wins",
            False,
            "not tested: the suite needs white-box and gradient-free/transfer attacks",
        )
    numbers, fired_at = {}, []
    for eps in report.eps:
        survivors = report.clean_correct.clone()
        for name in white:
            survivors &= ~report.record(name, eps).fooled
        extra = {name: int((report.record(name, eps).fooled & survivors).sum()) for name in others}
        gain = sum(extra.values()) / report.samples
        numbers[f"{eps:g}"] = {
            "white_box_robust": float(survivors.float().mean()),
            "extra_fooled": extra,
            "gain": gain,
        }
        if gain > tolerance:
            fired_at.append(
                f"{eps:g} (+{100 * gain:.1f} pts by {', '.join(k for k, v in extra.items() if v)})"
            )
    if fired_at:
        return Flag(
            "gradient-free-or-transfer-wins",
            True,
            "gradient masking: non-white-box attacks beat the white-box ones at eps " + "; ".join(fired_at),
            numbers,
        )
    return Flag(
        "gradient-free-or-transfer-wins",
        False,
        f"white-box attacks found everything the others did (within {100 * tolerance:g} pts)",
        numbers,
    )


def _protocol_wins(report: SuiteReport, tolerance: float) -> Flag:
    """Per protocol record: the share of its attacked samples it fooled although they are robust in the
    worst case at that eps (fired above ``tolerance``)."""
    if not report.protocol or not report.records:
        return Flag("protocol-wins", False, "not tested: the suite needs protocol attacks and a cascade")
    numbers: dict[str, dict[str, Any]] = {}
    fired_at = []
    for record in report.protocol:
        missed = record.fooled & report.worst_case(record.eps) & record.attacked
        share = int(missed.sum()) / max(int(record.attacked.sum()), 1)
        numbers.setdefault(f"{record.eps:g}", {})[record.attack] = {"missed_by_cascade": int(missed.sum()),
                                                                      "share": share}
        if share > tolerance:
            fired_at.append(f"{record.attack} at eps {record.eps:g} (+{100 * share:.1f} pts)")
    if fired_at:
        return Flag("protocol-wins", True, "gradient masking or unconverged attacks: standalone attacks fool "
                    "samples the whole cascade missed: " + "; ".join(fired_at), numbers)
    return Flag("protocol-wins", False, f"the cascade found everything the protocol attacks did (within "
                f"{100 * tolerance:g} pts)", numbers)


def _gradient_health(report: SuiteReport, tolerance: float) -> Flag:
    worst: dict[str, float] = {}
    for record in report.records:
        if record.kind != "white-box":
            continue
        for key in ("zero_gradient_fraction", "nonfinite_gradient_fraction"):
            value = record.stats.get(key)
            if value is not None:
                worst[key] = max(worst.get(key, 0.0), float(value))
    bad = {k: v for k, v in worst.items() if v > tolerance}
    if bad:
        return Flag(
            "gradients",
            True,
            "masked gradients: " + ", ".join(f"{k} up to {v:.3f}" for k, v in bad.items()),
            worst,
        )
    return Flag(
        "gradients",
        False,
        "input gradients finite and non-zero" if worst else "no white-box statistics",
        worst,
    )


def _nonfinite_logits(report: SuiteReport) -> Flag:
    during = {
        f"{r.attack}@{r.eps:g}": int(r.nonfinite.sum()) for r in report.records if bool(r.nonfinite.any())
    }
    numbers = {"clean": report.clean_nonfinite, "during_attacks": during}
    if report.clean_nonfinite or during:
        return Flag(
            "nonfinite-logits",
            True,
            f"model returned NaN/inf logits ({report.clean_nonfinite} clean inputs, "
            f"{sum(during.values())} during attacks); those samples are counted as not robust",
            numbers,
        )
    return Flag("nonfinite-logits", False, "all logits finite", numbers)


def _eps_monotone(report: SuiteReport) -> Flag:
    eps = sorted(report.eps)
    raw = {f"{e:g}": report.robust_accuracy(None, e) for e in eps}
    rises = [
        (a, b)
        for a, b in zip(eps, eps[1:])
        if report.robust_accuracy(None, b) > report.robust_accuracy(None, a)
    ]
    if rises:
        text = ", ".join(f"{raw[f'{a:g}']:.3f} at {a:g} -> {raw[f'{b:g}']:.3f} at {b:g}" for a, b in rises)
        return Flag(
            "eps-monotone",
            True,
            f"robust accuracy rises with eps ({text}): attacks failed at the larger "
            "eps (the worst case carries smaller-eps adversarials up)",
            raw,
        )
    return Flag("eps-monotone", False, "robust accuracy non-increasing in eps", raw)


def gray_predictions(
    model: nn.Module, x: Tensor, batch_size: int = 250, grays: Sequence[float] = GRAYS
) -> Tensor:
    """The model's class for each constant image of value ``grays[i]`` with ``x``'s sample shape and dtype
    (independent of ε: compute it once per model and pass it to :func:`constant_image_cap`)."""
    images = torch.stack([torch.full(x.shape[1:], g, dtype=x.dtype) for g in grays])
    return predict(model, images.to(model_device(model)), batch_size).argmax(dim=1).cpu()


def constant_image_cap(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    batch_size: int = 250,
    grays: Sequence[float] = GRAYS,
    predicted: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Per sample: can it still be robust at ``eps``? False where some constant gray image lies in its ball
    and the model predicts another class there (a verified adversarial at no cost). ``predicted``: the
    model's classes for the ``grays`` (:func:`gray_predictions`), when a caller asks at several ``eps``."""
    if predicted is None:
        predicted = gray_predictions(model, x, batch_size, grays)
    elif predicted.shape != (len(grays),):
        raise ValueError(
            f"predicted must hold one class per gray ({len(grays)}), got shape {tuple(predicted.shape)}"
        )
    possible = torch.ones(x.shape[0], dtype=torch.bool)
    covering = torch.zeros(x.shape[0], dtype=torch.bool)
    every = []  # the grays inside every sample's ball
    for g, label in zip(grays, predicted):
        inside = perturbation_size(x - g, norm) <= eps
        covering |= inside
        possible &= ~(inside & (y != label))
        if bool(inside.all()):
            every.append(g)
    info = {
        "covered_fraction": float(covering.float().mean()),
        "gray_in_every_ball": every[len(every) // 2] if every else None,
    }
    if every:
        g = every[len(every) // 2]
        info["gray_prediction"] = int(predicted[list(grays).index(g)])
    return possible, info


def _eps_sanity(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    report: SuiteReport,
    protocol: Mapping[str, Mapping[float, float]],
    batch_size: int,
) -> Flag:
    numbers: dict[str, Any] = {}
    failures = []
    predicted = gray_predictions(model, x, batch_size)
    for eps in report.eps:
        possible, info = constant_image_cap(model, x, y, eps, report.norm, batch_size, predicted=predicted)
        cap = float((possible & report.clean_correct).float().mean())
        worst = report.worst_case_accuracy(eps)
        numbers[f"{eps:g}"] = {"cap": cap, "worst_case": worst, **info}
        if info["covered_fraction"] == 0:
            continue
        candidates = {
            "worst case": worst,
            **{name: values[eps] for name, values in protocol.items() if eps in values},
        }
        for name, value in candidates.items():
            if value > cap + 1e-9:
                failures.append(f"{name} {value:.3f} > cap {cap:.3f} at eps {eps:g}")
    if failures:
        return Flag("eps-sanity", True, "evaluation failure: " + "; ".join(failures), numbers)
    covered = [k for k, v in numbers.items() if v["covered_fraction"] > 0]
    verdict = "all numbers under the constant-image cap" + (
        f" (binding at eps {', '.join(covered)})"
        if covered
        else " (no constant image inside any ball at these eps)"
    )
    return Flag("eps-sanity", False, verdict, numbers)


def batch_dependence(model: nn.Module, inputs: Tensor, batch_size: int = 250) -> dict[str, Any]:
    """Fraction of predictions that change when each input is evaluated alone instead of in its batch."""
    if inputs.shape[0] == 0:
        return {"changed": 0, "checked": 0, "fraction": 0.0, "max_logit_difference": 0.0}
    batched = predict(model, inputs, batch_size)
    alone = torch.cat([predict(model, inputs[i : i + 1], 1) for i in range(inputs.shape[0])])
    changed = batched.argmax(1) != alone.argmax(1)
    return {
        "changed": int(changed.sum()),
        "checked": int(inputs.shape[0]),
        "fraction": float(changed.float().mean()),
        "max_logit_difference": float((batched - alone).abs().nan_to_num(nan=float("inf")).max()),
    }


def randomness(model: nn.Module, inputs: Tensor, batch_size: int = 250) -> dict[str, Any]:
    """Largest logit difference and changed predictions between two identical calls. A logit that is the same
    NaN or inf in both calls is deterministic (counted in ``nonfinite_samples``: the ``nonfinite-logits``
    flag's business); NaN in one call only is a difference of inf."""
    first, second = predict(model, inputs, batch_size), predict(model, inputs, batch_size)
    same = (first == second) | (torch.isnan(first) & torch.isnan(second))
    apart = (first - second).abs().nan_to_num(nan=float("inf"))
    difference = torch.where(same, torch.zeros_like(first), apart)
    finite = torch.isfinite(first).all(1) & torch.isfinite(second).all(1)
    return {
        "max_logit_difference": float(difference.max()) if difference.numel() else 0.0,
        "changed_predictions": int(((first.argmax(1) != second.argmax(1)) & ~same.all(1)).sum()),
        "nonfinite_samples": int((~finite).sum()),
    }


def pgd_robust(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    seed_of: Callable[[int, int], int],
    alpha: float | None = None,
    batch_size: int = 250,
) -> Tensor:
    """Per-sample robustness of ``(x, y)`` under L-inf PGD (``steps`` steps of ``alpha``, random start): a
    protocol attack of :func:`attacks.run_suite` on every sample, ``seed_of(batch index, first sample)``
    seeding each batch (clean-correct and not fooled; NaN/inf logits inside the ball count as fooled)."""
    name = f"PGD-{steps}"
    attack = SuiteAttack(name, lambda e: PGD(e, alpha=alpha, steps=steps), kind="protocol",
                         seed_of=lambda e_index, b: seed_of(b, b * batch_size))
    return run_suite(model, x, y, [eps], [attack], batch_size=batch_size).protocol_robust(name, eps)


def iteration_convergence(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: Sequence[int],
    seed: int = 0,
    batch_size: int = 250,
) -> dict[int, Tensor]:
    """Per-sample robustness of ``(x, y)`` under L-inf PGD with each iteration count in ``steps``."""
    return {k: pgd_robust(model, x, y, eps, k, lambda b, start, k=k: batch_seed(seed, k, start),
                          batch_size=batch_size) for k in steps}


def run_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    report: SuiteReport,
    *,
    tolerance: float = 0.01,
    protocol: Mapping[str, Mapping[float, float]] | None = None,
    convergence_steps: Sequence[int] = (20, 100, 1000),
    convergence_samples: int = 50,
    dependence_samples: int = 50,
    batch_size: int = 250,
    seed: int = 0,
    attacks: Sequence[SuiteAttack] | None = None,
    indicator_samples: int = 50,
) -> list[Flag]:
    """Every check; sets and returns ``report.flags``. ``protocol`` adds other numbers to test against the
    eps-sanity cap (e.g. ``{"PGD-40": {0.5: 0.75}}``). The indicators of attack failure
    (:mod:`attacks.indicators`) run on the first ``indicator_samples`` correctly classified samples at the eps
    whose worst case is closest to 50%, probing the first white-box attack of ``attacks`` (0: skipped)."""
    x, y = x.detach().cpu(), y.detach().cpu().long()
    flags = report_flags(report, tolerance)
    flags.append(_eps_sanity(model, x, y, report, protocol or {}, batch_size))
    flags.append(
        _convergence(model, x, y, report, tolerance, convergence_steps, convergence_samples, seed, batch_size)
    )
    device = model_device(model)
    subset = x[:dependence_samples].to(device)
    adversarial = [xa for (_, _), (_, xa) in report.adversarials.items()]
    adversarial_inputs = torch.cat(adversarial)[:dependence_samples].to(device) if adversarial else subset[:0]
    clean = batch_dependence(model, subset, batch_size)
    adv = batch_dependence(model, adversarial_inputs, batch_size)
    numbers = {"clean": clean, "adversarial": adv}
    changed = clean["changed"] + adv["changed"]
    flags.append(
        Flag(
            "batch-dependence",
            changed > 0,
            f"{changed} of {clean['checked'] + adv['checked']} predictions change when solved alone"
            + (": results depend on the batch (use per-sample step control)" if changed else ""),
            numbers,
        )
    )
    noise = randomness(model, subset, batch_size)
    fired = noise["max_logit_difference"] > 0
    flags.append(
        Flag(
            "randomness",
            fired,
            (
                f"logits differ between identical calls (max {noise['max_logit_difference']:.3g}, "
                f"{noise['changed_predictions']} predictions): evaluate with EOT"
            )
            if fired
            else "deterministic"
            + (f" ({noise['nonfinite_samples']} samples with the same non-finite logits in both calls: see "
               "nonfinite-logits)" if noise["nonfinite_samples"] else ""),
            noise,
        )
    )
    if indicator_samples > 0:
        flags += _indicators(model, x, y, report, attacks, tolerance, indicator_samples, seed)
    report.flags = flags
    return flags


def _indicators(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    report: SuiteReport,
    attacks: Sequence[SuiteAttack] | None,
    tolerance: float,
    samples: int,
    seed: int,
) -> list[Flag]:
    chosen = report.clean_correct.nonzero().squeeze(1)[:samples]
    if chosen.numel() == 0:
        return [Flag("attack-failure-indicators", False, "not run: no correctly classified sample")]
    candidates = [e for e in report.eps if e > 0] or report.eps
    eps = min(candidates, key=lambda e: abs(report.worst_case_accuracy(e) - 0.5))
    flags = attack_failure_flags(model, x[chosen], y[chosen], eps, attacks, norm=report.norm,
                                 tolerance=tolerance, seed=batch_seed(seed, -3))
    few = chosen[:10]  # each sample solved alone, 5 times
    return flags + solver_flags(model, x[few], y[few], eps, report.norm, tolerance, seed=batch_seed(seed, -4))


def _convergence(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    report: SuiteReport,
    tolerance: float,
    steps: Sequence[int],
    samples: int,
    seed: int,
    batch_size: int,
) -> Flag:
    if not steps or samples <= 0:
        return Flag("more-iterations-help", False, "not run")
    # the eps whose worst case is closest to 50%: where iteration count matters most
    candidates = [e for e in report.eps if e > 0] or report.eps  # eps = 0 has nothing to converge
    eps = min(candidates, key=lambda e: abs(report.worst_case_accuracy(e) - 0.5))
    chosen = report.clean_correct.nonzero().squeeze(1)[:samples]
    if chosen.numel() == 0:
        return Flag("more-iterations-help", False, "not run: no correctly classified sample")
    robust = iteration_convergence(model, x[chosen], y[chosen], eps, steps, seed, batch_size)
    suite = report.worst_case(eps)[chosen]
    accuracy = {int(k): float(v.float().mean()) for k, v in robust.items()}
    missed = int((suite & ~robust[steps[-1]]).sum())
    numbers = {
        "eps": eps,
        "samples": int(chosen.numel()),
        "pgd_robust": accuracy,
        "suite_worst_case": float(suite.float().mean()),
        "missed_by_suite": missed,
    }
    values = [accuracy[int(k)] for k in steps]
    still_dropping = len(values) >= 2 and values[-2] - values[-1] > tolerance
    if still_dropping or missed / chosen.numel() > tolerance:
        text = " -> ".join(f"{v:.3f} (PGD-{k})" for k, v in zip(steps, values))
        return Flag(
            "more-iterations-help",
            True,
            f"at eps {eps:g}: {text}; {missed} samples fooled by PGD-{steps[-1]} but not by the suite",
            numbers,
        )
    return Flag(
        "more-iterations-help",
        False,
        f"at eps {eps:g} PGD-{'/'.join(str(k) for k in steps)} find nothing beyond the suite",
        numbers,
    )
