"""model_info.json: RobustBench's fields, per-attack numbers and pass counts, and ``unreliable`` exactly when
the worst case over every attack is more than one point below the AutoAttack attacks' number."""

from __future__ import annotations

import pytest
import torch

from attacks import AttackRecord, SuiteReport
from experiments.honest import Evaluation, EvaluationConfig
from experiments.model_card import autoattack_names, model_card

N = 200


def _mask(indices) -> torch.Tensor:
    out = torch.zeros(N, dtype=torch.bool)
    out[list(indices)] = True
    return out


def evaluation(extra_fooled: int) -> Evaluation:
    """180 of 200 clean-correct; the AutoAttack attacks fool 100 of them (40% robust); a solver-aware transfer
    attack after them fools ``extra_fooled`` more."""
    config = EvaluationConfig(eps=(0.1,), samples=N, steps=3, target_classes=1, queries=5, preset="ode-quick")
    names = autoattack_names(config)
    clean = _mask(range(180))
    records, fooled_before = [], 0
    for position, name in enumerate(names):
        fooled = _mask(range(fooled_before, 100)) if position == 0 else _mask([])
        fooled_before = 100
        records.append(AttackRecord(name, 0.1, "white-box", name, clean, fooled, _mask([]),
                                    stats={"forward_passes": 1000 + position, "backward_passes": 500}))
    transfer = "APGD-CE via rk4 20 steps"
    records.append(AttackRecord(transfer, 0.1, "transfer", transfer, _mask(range(100, 180)),
                                _mask(range(100, 100 + extra_fooled)), _mask([]),
                                stats={"forward_passes": 7, "backward_passes": 3}))
    report = SuiteReport([0.1], "linf", torch.zeros(N, dtype=torch.long), clean, records, [*names, transfer])
    passes = {"forward_passes": sum(r.stats["forward_passes"] for r in records),
              "backward_passes": sum(r.stats["backward_passes"] for r in records)}
    return Evaluation(config, report, {"PGD-40 (paper protocol)": {0.1: 0.45}}, {}, [], passes=passes)


@pytest.mark.parametrize("extra_fooled,unreliable", [(0, False), (1, False), (2, False), (3, True)])
def test_unreliable_marks_a_worst_case_more_than_one_point_below_autoattack(extra_fooled, unreliable) -> None:
    card = model_card(evaluation(extra_fooled), "odenet", architecture="odenet_mnist_small", dataset="mnist")
    (entry,) = card["results"]
    assert card["clean_acc"] == 90.0 and entry["autoattack_acc"] == 40.0
    assert entry["external"] == pytest.approx(40.0 - 0.5 * extra_fooled)
    assert entry["unreliable"] is unreliable and card["unreliable"] is unreliable
    assert ("footnote" in entry) is unreliable
    assert entry["per_attack"]["APGD-CE via rk4 20 steps"] == {
        "kind": "transfer", "robust_acc": entry["external"], "newly_fooled": extra_fooled, "attacked": 80,
        "forward_passes": 7, "backward_passes": 3}
    assert entry["protocol"] == {"PGD-40 (paper protocol)": 45.0}
    names = autoattack_names(evaluation(0).config)
    assert card["autoattack_attacks"] == names
    assert card["attack_forward_passes"] == sum(1000 + i for i in range(len(names))) + 7
    assert card["threat_model"] == "Linf" and card["number_forward_passes"] == 1
