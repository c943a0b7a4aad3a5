"""Boundary Attack: always adversarial, monotone L2, query budget respected, close to the analytic optimum."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from attacks import BoundaryAttack
from tests.attacks.support import linear_binary


class Counting(nn.Module):
    """Counts every evaluated row (one query per sample per call)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x)


def multiclass_linear(seed: int = 0, dim: int = 36, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(dim, classes))
    with torch.no_grad():
        model[1].weight.mul_(3.0)
    return model


def data(n: int, seed: int, dim: int = 36) -> torch.Tensor:
    side = math.isqrt(dim)
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


MODEL = multiclass_linear()


def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@given(budget=st.sampled_from([1, 2, 3, 7, 12, 13, 40, 151]), seed=st.integers(0, 1000),
       check_every=st.sampled_from([1, 3, 5]))
def test_query_budget_is_never_exceeded_and_every_query_is_counted(budget: int, seed: int,
                                                                   check_every: int) -> None:
    x = data(6, seed)
    y = predictions(MODEL, x)
    y[0] = (y[0] + 1) % 5  # one sample misclassified from the start
    counting = Counting(MODEL)
    attack = BoundaryAttack(max_queries=budget, spherical_check_every=check_every, seed=seed)
    result = attack.run(counting, x, y)
    x_adv = result.x_adv
    queries = result.stats["queries"]
    assert int(queries.max()) <= budget
    assert int(queries.sum()) == counting.rows
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    success = result.stats["success"]
    assert bool(success[0]) and torch.equal(x_adv[0], x[0]) and int(queries[0]) == 1
    fooled = predictions(MODEL, x_adv) != y
    assert bool((fooled | ~success).all())  # whatever is reported found is adversarial
    assert torch.equal(x_adv[~success], x[~success])


def test_result_is_adversarial_and_l2_never_increases() -> None:
    x = data(12, 1)
    y = predictions(MODEL, x)
    attack = BoundaryAttack(max_queries=400, record_history=True, seed=3)
    result = attack.run(MODEL, x, y)
    x_adv = result.x_adv
    assert bool(result.stats["success"].all())
    assert bool((predictions(MODEL, x_adv) != y).all())
    history = result.stats["l2_history"]
    assert history.shape[1] == 12 and history.shape[0] > 300
    steps = history.diff(dim=0)
    assert bool((steps[~steps.isnan()] <= 0).all())
    final = torch.linalg.vector_norm((x_adv - x).flatten(1), dim=1)
    last = torch.stack([column[~column.isnan()][-1] for column in history.T])
    assert torch.allclose(final, last, rtol=1e-5)
    assert float((last / history[0]).max()) < 0.9  # it makes progress on every sample


def test_converges_towards_the_analytic_minimum_of_a_linear_classifier() -> None:
    # binary linear model: the minimal L2 adversarial distance is |w.x + b| / ||w|| (away from the box faces)
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(1, 5, 5, generator=generator)
    model = linear_binary(w, bias=0.0)
    x = 0.4 + 0.2 * torch.rand(10, 1, 5, 5, generator=generator)
    x = x - ((x.flatten(1) @ w.flatten() - 0.15) / w.norm() ** 2)[:, None, None, None] * w  # w.x = 0.15
    y = predictions(model, x)
    optimum = (x.flatten(1) @ w.flatten()).abs() / w.norm()
    attack = BoundaryAttack(max_queries=1000, seed=0)
    ratio = attack.run(model, x, y).stats["l2"] / optimum
    assert float(ratio.min()) >= 1.0 - 1e-4  # never below the true minimum (it is adversarial)
    assert float(ratio.median()) < 1.1


def test_targeted_attack_from_given_starting_points() -> None:
    x = data(10, 4)
    y = predictions(MODEL, x)
    pool = data(400, 5)
    pool_labels = predictions(MODEL, pool)
    present = pool_labels.unique().tolist()
    assert len(present) >= 2
    target = torch.tensor([next(c for c in present if c != label) for label in y.tolist()])
    starts = torch.stack([pool[(pool_labels == t).nonzero()[0, 0]] for t in target.tolist()])
    attack = BoundaryAttack(max_queries=300, targeted=True, seed=1)
    result = attack.run(MODEL, x, target, starting_points=starts)
    x_adv = result.x_adv
    assert bool(result.stats["success"].all())
    assert torch.equal(predictions(MODEL, x_adv), target)
    start_l2 = torch.linalg.vector_norm((starts - x).flatten(1), dim=1)
    assert bool((result.stats["l2"] < start_l2).all())


def test_non_adversarial_starting_points_are_rejected() -> None:
    x = data(4, 6)
    y = predictions(MODEL, x)
    with pytest.raises(ValueError, match="not adversarial"):
        BoundaryAttack(max_queries=50)(MODEL, x, y, starting_points=x.clone())
    with pytest.raises(ValueError):
        BoundaryAttack(max_queries=50)(MODEL, x, y, starting_points=x[:2])


def test_samples_without_an_adversarial_start_are_reported_and_returned_unchanged() -> None:
    constant = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))  # always class 0
    x = data(3, 7)
    y = torch.zeros(3, dtype=torch.long)
    attack = BoundaryAttack(max_queries=30, init_attempts=5)
    result = attack.run(constant, x, y)
    x_adv = result.x_adv
    assert not bool(result.stats["success"].any())
    assert torch.equal(x_adv, x)
    assert bool(torch.isinf(result.stats["l2"]).all())
    assert int(result.stats["queries"].max()) == 6


def test_steps_cap_and_reproducibility() -> None:
    x = data(5, 8)
    y = predictions(MODEL, x)
    a = BoundaryAttack(max_queries=10_000, steps=50, seed=2)
    b = BoundaryAttack(max_queries=10_000, steps=50, seed=2)
    first = a.run(MODEL, x, y)
    assert torch.equal(first.x_adv, b(MODEL, x, y))
    per_sample_init = first.stats["queries"] - 50 - 50 // a.spherical_check_every
    assert bool((per_sample_init >= 2).all()) and bool((per_sample_init <= 1 + 100 + 10).all())


def test_bad_configuration_raises() -> None:
    with pytest.raises(ValueError):
        BoundaryAttack(max_queries=0)
    with pytest.raises(ValueError):
        BoundaryAttack(step_adaptation=1.0)
    with pytest.raises(ValueError):
        BoundaryAttack(spherical_step=0.0)


def test_batch_fallback_starts_samples_that_noise_cannot_start() -> None:
    # class 1 only near the corner x = 1: uniform noise (sum ~ n/2) is never class 1
    model = linear_binary(torch.ones(1, 4, 4), bias=-14.0)
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([0.5 * torch.rand(4, 1, 4, 4, generator=generator),
                   0.95 + 0.05 * torch.rand(2, 1, 4, 4, generator=generator)])
    y = predictions(model, x)
    assert y.tolist() == [0, 0, 0, 0, 1, 1]
    with_fallback = BoundaryAttack(max_queries=100, init_attempts=3)
    result = with_fallback.run(model, x, y)
    assert bool(result.stats["success"].all())
    assert bool((predictions(model, result.x_adv) != y).all())
    without = BoundaryAttack(max_queries=100, init_attempts=3, init_from_batch=False)
    assert without.run(model, x, y).stats["success"].tolist() == [False] * 4 + [True] * 2
