"""Evaluation: robust accuracy / success definitions, the eps sweep table, CSV/JSON, masking warnings."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from attacks import FGSM, PGD, BoundaryAttack, ResultTable, evaluate_attack, gradient_masking_warnings, sweep
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
    boundary_calls: list[int] = []

    def boundary(eps: float) -> BoundaryAttack:
        boundary_calls.append(counting.calls)
        return BoundaryAttack(max_queries=200)

    table = sweep(counting, {"FGSM": FGSM, "PGD": lambda e: PGD(e, steps=5), "Boundary": boundary}, eps_list,
                  (x, y), batch_size=50, progress=False)
    assert len(table) == 3 * 3 + 3
    assert set(table.column("attack")) == {"FGSM", "PGD", "Boundary", "worst-case"}
    by = {(r["attack"], r["eps"]): r for r in table.rows}
    # the boundary attack ran once (its later factory calls made no model calls in between)
    assert boundary_calls[1] == boundary_calls[2]
    for eps in eps_list:
        worst = by[("worst-case", eps)]["robust_accuracy"]
        assert worst <= min(by[(a, eps)]["robust_accuracy"] for a in ("FGSM", "PGD", "Boundary")) + 1e-12
    assert by[("PGD", 0.0)]["robust_accuracy"] == by[("PGD", 0.0)]["clean_accuracy"]
    assert by[("Boundary", 0.0)]["robust_accuracy"] == by[("Boundary", 0.0)]["clean_accuracy"]
    boundary_robust = [by[("Boundary", e)]["robust_accuracy"] for e in eps_list]
    assert boundary_robust == sorted(boundary_robust, reverse=True)
    assert by[("Boundary", 0.05)]["max_queries"] <= 200
    # the black-box attack cannot beat the exact white-box one on a linear model
    assert by[("Boundary", 0.05)]["robust_accuracy"] >= by[("FGSM", 0.05)]["robust_accuracy"]
    assert gradient_masking_warnings(table) == []

    table.to_csv(tmp_path / "sweep.csv")
    table.to_json(tmp_path / "sweep.json")
    with open(tmp_path / "sweep.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(table) and float(rows[0]["eps"]) == 0.0
    loaded = json.loads((tmp_path / "sweep.json").read_text())
    assert len(loaded) == len(table) and loaded[-1]["attack"] == "worst-case"
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files
    assert "robust_accuracy" in str(table)


def test_masked_gradients_are_flagged() -> None:
    model, _, _, x, y = linear_problem(100, seed=2)

    class Quantized(nn.Module):  # a piecewise-constant input map: zero gradients, same decisions
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return model(torch.round(inputs * 64) / 64)

    table = sweep(Quantized(), {"FGSM": FGSM, "PGD": lambda e: PGD(e, steps=5),
                                "Boundary": lambda e: BoundaryAttack(max_queries=300)},
                  [0.05], (x, y), progress=False)
    warnings = gradient_masking_warnings(table)
    assert any("black-box" in w for w in warnings)
    assert any("zero_gradient_fraction" in w for w in warnings)
    assert any("did not rise" in w for w in warnings)


def test_fgsm_beating_pgd_is_flagged() -> None:
    table = ResultTable([
        {"attack": "FGSM", "eps": 0.1, "robust_accuracy": 0.2},
        {"attack": "PGD", "eps": 0.1, "robust_accuracy": 0.5, "objective_start": 1.0, "objective_end": 2.0},
    ])
    assert len(gradient_masking_warnings(table)) == 1


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
