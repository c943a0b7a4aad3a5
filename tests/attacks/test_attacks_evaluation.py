"""Standalone attacks as rows (a view over the suite's protocol attacks): robust accuracy / success
definitions, the eps sweep table, CSV/JSON, and the protocol-wins flag."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from attacks import FGSM, PGD, BoundaryAttack, SuiteAttack, evaluate_attack, run_suite, sweep
from attacks.checks import report_flags
from tests.attacks.support import linear_binary


def linear_problem(n: int = 300, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=generator) * 0.5
    bias = -0.5 * float(w.sum())  # balanced classes around the centre of the box
    model = linear_binary(w, bias=bias)
    x = 0.25 + 0.5 * torch.rand(n, 16, generator=generator)
    y = ((x @ w + bias) > 0).long()
    y[: n // 10] = 1 - y[: n // 10]  # 10 % misclassified
    return model, w, bias, x, y


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def test_robust_accuracy_and_success_rate_match_the_linear_analysis() -> None:
    model, w, bias, x, y = linear_problem()
    eps = 0.04
    margin = (2 * y - 1).float() * (x @ w + bias)
    clean = margin > 0
    robust = margin > eps * w.abs().sum()  # FGSM is exact for a linear model away from the box faces
    row = evaluate_attack(model, FGSM(eps), (x, y), batch_size=64)
    assert row["samples"] == 300 and row["eps"] == eps
    assert row["clean_accuracy"] == pytest.approx(float(clean.float().mean()))
    assert row["robust_accuracy"] == pytest.approx(float(robust.float().mean()))
    expected_success = float((clean & ~robust).sum()) / float(clean.sum())
    assert row["success_rate"] == pytest.approx(expected_success)
    assert row["max_linf"] <= eps + 1e-6 and row["mean_linf"] == pytest.approx(eps, abs=1e-6)
    assert row["zero_gradient_fraction"] == 0.0 and row["mean_queries"] is None


def test_sweep_table_runs_minimization_attacks_once_and_exports(tmp_path) -> None:
    model, _, _, x, y = linear_problem(120, seed=1)
    counting = Counting(model)
    eps_list = [0.0, 0.02, 0.05]
    boundary_batches: list[int] = []

    class Boundary(BoundaryAttack):
        def _attack(self, model, x, y):
            boundary_batches.append(x.shape[0])
            return super()._attack(model, x, y)

    def boundary(eps: float) -> BoundaryAttack:
        return Boundary(max_queries=200)

    table = sweep(counting, {"FGSM": FGSM, "PGD": lambda e: PGD(e, steps=5), "Boundary": boundary}, eps_list,
                  (x, y), batch_size=50, progress=False)
    assert len(table) == 3 * 3
    assert table.column("attack") == ["FGSM"] * 3 + ["PGD"] * 3 + ["Boundary"] * 3
    by = {(r["attack"], r["eps"]): r for r in table.rows}
    assert boundary_batches == [50, 50, 20]  # the boundary attack ran once over the data
    assert by[("PGD", 0.0)]["robust_accuracy"] == by[("PGD", 0.0)]["clean_accuracy"]
    assert by[("Boundary", 0.0)]["robust_accuracy"] == by[("Boundary", 0.0)]["clean_accuracy"]
    boundary_robust = [by[("Boundary", e)]["robust_accuracy"] for e in eps_list]
    assert boundary_robust == sorted(boundary_robust, reverse=True)
    assert by[("Boundary", 0.05)]["max_queries"] <= 200
    # the black-box attack cannot beat the exact white-box one on a linear model
    assert by[("Boundary", 0.05)]["robust_accuracy"] >= by[("FGSM", 0.05)]["robust_accuracy"]

    table.to_csv(tmp_path / "sweep.csv")
    table.to_json(tmp_path / "sweep.json")
    with open(tmp_path / "sweep.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(table) and float(rows[0]["eps"]) == 0.0
    loaded = json.loads((tmp_path / "sweep.json").read_text())
    assert len(loaded) == len(table) and loaded[-1]["attack"] == "Boundary"
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files
    assert "robust_accuracy" in str(table)


def _protocol_wins(cascade_alpha: float):
    """FGSM (one full step of eps) as a protocol attack beside a cascade of one PGD step of ``alpha``."""
    model, _, _, x, y = linear_problem(100, seed=2)
    attacks = [SuiteAttack("PGD-1", lambda e: PGD(e, alpha=cascade_alpha * e, steps=1, random_start=False)),
               SuiteAttack("FGSM", FGSM, kind="protocol")]
    report = run_suite(model, x, y, [0.05], attacks, batch_size=50)
    return {flag.name: flag for flag in report_flags(report)}["protocol-wins"], report


def test_a_single_step_protocol_attack_beating_the_iterative_cascade_fires_protocol_wins() -> None:
    flag, report = _protocol_wins(0.1)  # a tenth of the step: the cascade misses what FGSM finds
    assert flag.fired and "FGSM at eps 0.05" in flag.verdict
    assert flag.numbers["0.05"]["FGSM"]["missed_by_cascade"] > 0
    # the protocol number is beside the worst case, never in it
    assert report.worst_case_accuracy(0.05) > report.protocol_accuracy("FGSM", 0.05)


def test_protocol_wins_stays_quiet_when_the_cascade_finds_everything_the_protocol_does() -> None:
    flag, report = _protocol_wins(1.0)  # the same step: PGD-1 without random start is FGSM
    assert not flag.fired and flag.numbers["0.05"]["FGSM"]["missed_by_cascade"] == 0
    assert report.worst_case_accuracy(0.05) == report.protocol_accuracy("FGSM", 0.05) < 1.0


def test_bad_sweep_arguments_raise() -> None:
    model, _, _, x, y = linear_problem(10)
    with pytest.raises(ValueError):
        sweep(model, {"FGSM": FGSM}, [-0.1], (x, y), progress=False)
    with pytest.raises(ValueError):
        sweep(model, {"FGSM": FGSM}, [0.1], (x, y), norm="l1", progress=False)
    with pytest.raises(TypeError):
        sweep(model, {"bad": lambda e: None}, [0.1], (x, y), progress=False)
    with pytest.raises(ValueError):
        evaluate_attack(model, FGSM(0.1), (x[:0], y[:0]))


def test_a_sweep_over_batches_equals_the_sweep_over_their_tensors() -> None:
    model, _, _, x, y = linear_problem(40, seed=3)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]
    whole = sweep(model, {"PGD": lambda e: PGD(e, steps=3)}, [0.05], (x, y), batch_size=16, progress=False)
    parts = sweep(model, {"PGD": lambda e: PGD(e, steps=3)}, [0.05], batches, batch_size=16, progress=False)
    assert [dict(r, seconds=0) for r in whole.rows] == [dict(r, seconds=0) for r in parts.rows]
    assert whole.rows[0]["robust_accuracy"] < whole.rows[0]["clean_accuracy"]  # PGD did something
    short = sweep(model, {"PGD": lambda e: PGD(e, steps=3)}, [0.05], batches, max_samples=10, progress=False)
    assert short.rows[0]["samples"] == 10
