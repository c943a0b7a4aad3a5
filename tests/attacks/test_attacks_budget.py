"""Budgeted mode: MALT's target ranking is the exact distance to each pairwise boundary on a linear model and
finds the target logit ranking misses; the pass counter counts APGD's forward and backward passes exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from attacks import APGD, APGDT
from attacks.budget import MALTAPGDT, PROBE_STEPS, QUERY_DIVISOR, budget_preset, malt_targets
from attacks.passes import PassCounter
from attacks.suite import PRESETS


def linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype))
    with torch.no_grad():
        model[1].weight.copy_(weight)
        model[1].bias.copy_(bias)
    return model


@given(seed=st.integers(0, 2**31 - 1), norm=st.sampled_from(["linf", "l2"]))
def test_malt_ranks_classes_by_the_exact_distance_to_each_pairwise_boundary_of_a_linear_model(seed, norm):
    # z = W x + b: the smallest perturbation reaching z_t = z_y has size gap / ||w_y - w_t||_* (dual norm)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 12, generator=generator, dtype=torch.float64)
    bias = torch.randn(6, generator=generator, dtype=torch.float64)
    model = linear(weight, bias)
    x = torch.rand(5, 1, 3, 4, generator=generator, dtype=torch.float64)
    y = model(x).argmax(1)
    ranked = malt_targets(model, x, y, 5, norm)
    dual = 1 if norm == "linf" else 2
    with torch.no_grad():
        z = model(x)
    rows = torch.arange(5)
    gap = z[rows, y].unsqueeze(1) - z  # (5, 6)
    distance = gap / (weight[y].unsqueeze(1) - weight.unsqueeze(0)).norm(p=dual, dim=2)
    distance[rows, y] = torch.inf
    assert torch.equal(ranked, distance.argsort(dim=1)[:, :5])
    # a step of the nearest distance along the dual direction lands exactly on that boundary
    t = ranked[:, 0]
    direction = weight[t] - weight[y]
    step = direction.sign() if norm == "linf" else direction / direction.norm(dim=1, keepdim=True)
    with torch.no_grad():
        moved = model((x.flatten(1) + distance[rows, t].unsqueeze(1) * step).view_as(x))
    torch.testing.assert_close(moved[rows, t] - moved[rows, y], torch.zeros(5, dtype=torch.float64),
                               rtol=0, atol=1e-9)


def test_malt_finds_the_near_target_that_logit_ranking_misses() -> None:
    # class 1 has the second-highest logit but a tiny gradient gap (far away); class 2 a lower logit but a
    # large gap (near): with one target, APGD-T attacks class 1 and fails, MALT attacks class 2 and succeeds
    weight = torch.zeros(4, 8)
    weight[1, 0] = 0.01
    weight[2] = 1.0
    model = linear(weight, torch.tensor([1.0, 0.9, 0.3, -5.0]))
    x = torch.full((3, 1, 2, 4), 0.05)  # logits 1.0, 0.9005, 0.7, -5
    y = torch.zeros(3, dtype=torch.long)
    assert (model(x).argmax(1) == 0).all()
    assert malt_targets(model, x, y, 1)[:, 0].tolist() == [2, 2, 2]
    eps = 0.1  # class 2 needs 0.3 / 8 per pixel; class 1 would need about 10 per pixel
    logit_ranked = APGDT(eps, steps=10, target_classes=1)(model, x, y)
    malt = MALTAPGDT(eps, steps=10, target_classes=1)(model, x, y)
    assert (model(logit_ranked).argmax(1) == 0).all()
    assert (model(malt).argmax(1) == 2).all()


def test_pass_counter_counts_apgd_forward_and_backward_passes_per_sample() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    x = torch.rand(7, 1, 4, 4)
    y = model(x).argmax(1)
    with PassCounter(model, model) as counter:  # hooked once however often given
        APGD(0.01, steps=5)(model, x, y)
    # one clean forward, then steps + 1 objective evaluations, each a forward and a backward pass
    assert counter.snapshot() == (7 * (1 + 6), 7 * 6)
    model(x)  # closed: no longer counted
    assert counter.snapshot() == (7 * 7, 7 * 6)


def test_budget_preset_puts_a_probe_first_and_cuts_targets_and_queries() -> None:
    names = [a.name for a in budget_preset("standard")]
    steps, queries = PRESETS["standard"]["steps"], PRESETS["standard"]["queries"]
    assert names == [f"APGD-CE-{PROBE_STEPS} probe", f"APGD-CE-{steps}", f"APGD-T-MALT-{steps}x2",
                     f"Square-{queries // QUERY_DIVISOR}"]
    with pytest.raises(ValueError, match="unknown preset"):
        budget_preset("fast")
