"""The binarization test of the evaluation suite (``python -m experiments.evaluate --unit-test``).

For each sample and eps, :func:`attacks.binarization.binarization_test` builds the binarized classifier of
Zimmermann et al. (NeurIPS 2022) in which an adversarial example provably exists inside the ball, and runs
the configured suite (the preset and the solver-aware attacks, on the deployed model) on it. Reports the
fraction of samples where the suite finds the adversarial, per eps, and writes ``unit_test.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from attacks import SuiteAttack, run_suite
from attacks.binarization import BinarizationResult, binarization_test
from experiments.honest import EvaluationConfig, deployed, suite_attacks
from storage.atomic import atomic_write_text

__all__ = ["suite_runner", "unit_test", "write_unit_test"]


def suite_runner(
    attacks: Sequence[SuiteAttack], eps: float, norm: str, seed: int
) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """``(model, x, y) -> x_adv``: the suite's cascade at ``eps``; the first adversarial found, else ``x``."""

    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        report = run_suite(model, x, y, [eps], attacks, norm=norm, batch_size=x.shape[0], seed=seed)
        found = [x_adv for (_, x_adv) in report.adversarials.values()]
        return found[0].to(x.device) if found else x

    return run


def unit_test(
    model: nn.Module, x: Tensor, config: EvaluationConfig, against: Mapping[str, nn.Module] | None = None
) -> dict[float, BinarizationResult]:
    """The suite's binarization test at every eps of ``config`` on the samples ``x``."""
    model.eval()
    attacks = suite_attacks(model, config, dict(against or {}))
    results = {}
    with deployed(model, config.per_sample):
        for eps in config.eps:
            results[eps] = binarization_test(
                model,
                x,
                eps,
                suite_runner(attacks, eps, config.norm, config.seed),
                config.norm,
                seed=config.seed,
            )
    return results


def write_unit_test(
    results: Mapping[float, BinarizationResult], out: Path, command: str, extra: Mapping[str, Any]
) -> Path:
    payload = {
        "command": command,
        **extra,
        "binarization_test": {f"{eps:g}": result.to_json() for eps, result in results.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / "unit_test.json", json.dumps(payload, indent=2, default=str) + "\n")


def summary_lines(results: Mapping[float, BinarizationResult]) -> list[str]:
    lines = []
    for eps, result in results.items():
        data = result.to_json()
        lines.append(
            f"binarization test at eps {eps:g}: the suite passed on {data['passed']} of "
            f"{data['applicable']} samples ({100 * result.pass_rate:.1f}%; "
            f"{data['samples'] - data['applicable']} without a separable readout)"
        )
    return lines
