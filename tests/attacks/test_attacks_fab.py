"""FAB-T: the hyperplane-in-box projection against scipy, the minimal distance on linear models, the eps
threshold, the ball and box, the preset order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy.optimize import brentq, linprog

from attacks import FABT, preset
from attacks.fab import project_onto_hyperplane_in_box
from tests.attacks.support import linear_binary, random_images, small_cnn


def scipy_minimal_step(p: np.ndarray, w: np.ndarray, b: float, norm: str) -> float:
    """min ||d|| s.t. w.(p + d) = b, 0 <= p + d <= 1: by linprog (L-inf), by a root of the KKT conditions
    (L2)."""
    size, bounds = p.size, [(-pi, 1 - pi) for pi in p]
    if norm == "linf":  # variables (d, r): min r, -r <= d_i <= r
        a_ub = np.vstack([np.c_[np.eye(size), -np.ones(size)], np.c_[-np.eye(size), -np.ones(size)]])
        result = linprog(np.r_[np.zeros(size), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * size),
                         A_eq=np.r_[w, 0.0][None], b_eq=[b - w @ p], bounds=bounds + [(0, None)])
        assert result.success
        return float(result.x[-1])
    # L2: the KKT point d = clip(lam w, -p, 1 - p), lam the root of the increasing w.d(lam) - (b - w.p)
    def gap(lam: float) -> float:
        return float(w @ np.clip(lam * w, -p, 1 - p) - (b - w @ p))

    high = 1.0
    while gap(high) <= 0 or gap(-high) >= 0:  # bracket the root (the box reaches the hyperplane)
        high *= 2
    lam = brentq(gap, -high, high, xtol=1e-15, rtol=1e-15)
    return float(np.linalg.norm(np.clip(lam * w, -p, 1 - p)))


@given(norm=st.sampled_from(["linf", "l2"]), seed=st.integers(0, 10_000), zeros=st.integers(0, 4))
def test_projection_is_feasible_and_as_short_as_scipys(norm: str, seed: int, zeros: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    p = torch.rand(1, 10, generator=generator, dtype=torch.float64)
    w = torch.randn(1, 10, generator=generator, dtype=torch.float64)
    w[0, :zeros] = 0.0
    b = (w * p).sum(1) + 0.5 * torch.randn(1, generator=generator, dtype=torch.float64)
    room = torch.where(w > 0, 1 - p, p)
    assume(float((b - (w * p).sum(1)).abs()) < 0.999 * float((w.abs() * room).sum()))  # the box reaches it
    d = project_onto_hyperplane_in_box(p, w, b, norm)[0]
    assert abs(float(w[0] @ (p[0] + d)) - float(b)) < 1e-12
    assert float((p[0] + d).min()) >= 0.0 and float((p[0] + d).max()) <= 1.0 + 1e-15
    size = float(d.abs().max() if norm == "linf" else d.norm())
    expected = scipy_minimal_step(p[0].numpy(), w[0].numpy(), float(b), norm)
    assert size == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_projection_out_of_reach_goes_to_the_closest_box_corner() -> None:
    p = torch.full((1, 3), 0.5)
    w = torch.tensor([[1.0, -2.0, 0.0]])
    d = project_onto_hyperplane_in_box(p, w, torch.tensor([10.0]), "l2")
    torch.testing.assert_close(d, torch.tensor([[0.5, -0.5, 0.0]]))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_minimal_distance_of_a_linear_model_within_one_percent(norm: str) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1, 8, 8, generator=generator)
    x = 0.3 + 0.4 * torch.rand(16, 1, 8, 8, generator=generator)
    model = linear_binary(weight)
    with torch.no_grad():
        margin = model(x)[:, 1]
    y = (margin > 0).long()
    exact = margin.abs() / (weight.abs().sum() if norm == "linf" else weight.norm())  # box never binds here
    attack = FABT(10.0, steps=100, target_classes=1, norm=norm)
    ratio = attack.run(model, x, y).stats["min_distance"] / exact
    assert float(ratio.min()) >= 1.0 - 1e-5 and float(ratio.max()) <= 1.01
    for scale, fooled in ((0.99, False), (1.02, True)):  # fooled at eps iff the minimal distance is inside
        eps = float(exact[0]) * scale
        single = FABT(eps, steps=100, target_classes=1, norm=norm)
        x_adv = single(model, x[:1], y[:1])
        with torch.no_grad():
            assert bool(model(x_adv).argmax(1) != y[:1]) is fooled
        delta = x_adv - x[:1]
        assert float(delta.abs().amax() if norm == "linf" else delta.norm()) <= eps * 1.0001


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_results_are_misclassified_inside_the_ball_and_the_box_or_untouched(norm: str) -> None:
    model = small_cnn(0)
    x, _ = random_images(24, 1)
    x[0].zero_()
    x[1].fill_(1.0)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.05 if norm == "linf" else 0.5
    attack = FABT(eps, steps=20, target_classes=3, norm=norm)
    result = attack.run(model, x, y)
    x_adv = result.x_adv
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert bool((size <= eps * 1.0001).all()) and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert torch.equal(fooled, result.stats["fooled"])
    assert bool((size[~fooled] == 0).all())  # nothing found: the clean point comes back
    assert 0 < int(fooled.sum()) < 24
    # per target: 1 + steps linearizations, plus one per step back; the clean forward pass once
    assert int(result.stats["queries"].min()) >= 1 + 21


def test_fab_is_reproducible_with_restarts_and_validates_its_arguments() -> None:
    model = small_cnn(0)
    x, y = random_images(8, 2)
    first = FABT(0.05, steps=5, restarts=2, target_classes=2, seed=3)(model, x, y)
    second = FABT(0.05, steps=5, restarts=2, target_classes=2, seed=3)(model, x, y)
    assert torch.equal(first, second)
    for kwargs, message in (({"norm": "l1"}, "norm"), ({"beta": 1.0}, "beta"),
                            ({"alpha_max": 2.0}, "alpha_max"), ({"steps": 0}, "steps"),
                            ({"target_classes": 0}, "target_classes")):
        with pytest.raises(ValueError, match=message):
            FABT(0.1, **kwargs)


def test_presets_run_fab_t_after_apgd_t_and_before_square() -> None:
    standard = ["APGD-CE-100", "APGD-T-100x9", "FAB-T-100x9", "Square-5000"]
    assert [a.name for a in preset("standard")] == standard
    assert [a.name for a in preset("quick")] == ["APGD-CE-50", "APGD-T-50x3", "FAB-T-50x3", "Square-1000"]
    fab = preset("standard", norm="l2")[2].factory(0.5)
    assert isinstance(fab, FABT) and fab.norm == "l2" and fab.steps == 100 and fab.target_classes == 9
