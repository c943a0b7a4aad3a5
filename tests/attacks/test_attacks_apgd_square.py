"""APGD / APGD-T and the Square Attack: schedule, losses, budgets, exact optima on linear models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attacks import APGD, APGDT, PGD, NonFiniteLogitsError, Square
from attacks.apgd import _projection, apgd_checkpoints, dlr_loss, dlr_loss_targeted
from attacks.square import _window_index, _window_mask, square_p_schedule
from tests.attacks.support import linear_binary, random_images, small_cnn


def robust(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def test_checkpoints_follow_the_paper_for_100_iterations() -> None:
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == [1]
    windows = [b - a for a, b in zip([0] + apgd_checkpoints(1000), apgd_checkpoints(1000))]
    assert windows[0] == 220 and min(windows) == 60 and windows == sorted(windows, reverse=True)


def test_dlr_losses_are_shift_and_scale_invariant() -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    t = (y + 1) % 10
    for loss in (lambda z: dlr_loss(z, y), lambda z: dlr_loss_targeted(z, y, t)):
        torch.testing.assert_close(loss(3.0 * logits + 7.0), loss(logits), rtol=1e-5, atol=1e-6)
    top = logits.argmax(1)
    assert bool((dlr_loss(logits, top) <= 0).all())  # correctly classified: negative DLR


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_apgd_is_never_worse_than_pgd_with_the_same_iterations(seed: int, eps: float) -> None:
    model = small_cnn(seed)
    x, _ = random_images(128, seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    apgd = robust(model, APGD(eps, steps=20)(model, x, y), y)
    pgd = robust(model, PGD(eps, steps=20)(model, x, y), y)
    assert apgd <= pgd


@given(norm=st.sampled_from(["linf", "l2"]), eps=st.sampled_from([0.0, 0.01, 0.1, 0.5]),
       which=st.integers(0, 3), seed=st.integers(0, 100))
def test_every_result_stays_in_the_ball_and_the_box(norm: str, eps: float, which: int, seed: int) -> None:
    model = small_cnn(0)
    x, y = random_images(6, seed)
    x[0].zero_()
    x[1].fill_(1.0)
    attack = [APGD(eps, steps=5, norm=norm), APGD(eps, steps=5, norm=norm, loss="dlr"),
              APGDT(eps, steps=3, target_classes=2, norm=norm), Square(eps, max_queries=20, norm=norm)][which]
    x_adv = attack(model, x, y)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool(torch.isfinite(x_adv).all()) and x_adv.shape == x.shape
    assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    if eps == 0.0:
        assert torch.equal(x_adv, x)


def test_apgd_is_seeded_and_restores_train_mode() -> None:
    model = small_cnn(0).train()
    x, y = random_images(8, 0)
    first, second = APGD(0.05, steps=5, seed=3)(model, x, y), APGD(0.05, steps=5, seed=3)(model, x, y)
    assert torch.equal(first, second) and model.training


def test_apgd_t_targets_the_top_classes_and_needs_four() -> None:
    attack = APGDT(0.1, steps=2, target_classes=9)
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    targets = attack._targets(logits, torch.tensor([0]))
    assert [int(t) for t in targets] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="4 classes"):
        attack(linear_binary(torch.ones(1, 2, 2)), torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 2.0])
def test_linf_projection_is_the_ball_then_the_box_bit_for_bit(eps: float) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(8, 2, 5, 5, generator=generator)
    x[0] = 0.0
    x[1] = 1.0
    v = 4.0 * torch.rand(x.shape, generator=generator) - 1.5
    expected = torch.minimum(torch.maximum(v, x - eps), x + eps).clamp(0.0, 1.0)
    assert torch.equal(_projection(x, eps, "linf")(v), expected)


@pytest.mark.parametrize("s", [1, 2, 5, 7])
def test_square_window_mask_is_the_window_index_with_the_same_draws(s: int) -> None:
    h, w = 7, 9
    mask = _window_mask(6, s, h, w, torch.Generator().manual_seed(s), torch.device("cpu"))
    batch, rows, cols = _window_index(6, s, h, w, torch.Generator().manual_seed(s), torch.device("cpu"))
    expected = torch.zeros(6, 1, h, w, dtype=torch.bool)
    expected[batch, :, rows, cols] = True
    assert torch.equal(mask, expected)
    assert bool((mask.flatten(1).sum(1) == s * s).all())


def test_square_schedule_halves_p_at_the_papers_breakpoints() -> None:
    iterations = (0, 10, 11, 50, 51, 201, 501, 1001, 2001, 4001, 6001, 8001)
    expected = [0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625]
    assert [square_p_schedule(i, 0.8) for i in iterations] == expected
    assert square_p_schedule(100, 0.8, max_queries=1000, rescale_schedule=True) == 0.8 / 16


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("budget", [1, 2, 7, 50])
def test_square_never_exceeds_its_query_budget(norm: str, budget: int) -> None:
    model = small_cnn(1)
    x, _ = random_images(10, 3)
    y = model(x).argmax(1)
    calls = []
    counted = lambda z: calls.append(z.shape[0]) or model(z)  # noqa: E731
    attack = Square(0.05, max_queries=budget, norm=norm)
    result = attack.run(counted, x, y)
    queries = result.stats["queries"]
    assert int(queries.max()) <= budget and int(queries.min()) >= 1
    assert sum(calls) - 1 == int(queries.sum())  # all counted (+1: label check)
    fooled = result.stats["fooled"]
    assert bool((queries[fooled] <= budget).all())


def _linear_case(eps_scale: float):
    generator = torch.Generator().manual_seed(5)
    w = torch.randn(1, 4, 4, generator=generator)
    w[w.abs() < 0.05] = 0.3
    x = 0.3 + 0.4 * torch.rand(8, 1, 4, 4, generator=generator)  # no clipping at eps <= 0.3
    margin = (x.flatten(1) @ w.flatten()).abs()  # logits [0, w.x]; label = the predicted class
    y = (x.flatten(1) @ w.flatten() > 0).long()
    eps = eps_scale * margin / w.abs().sum()  # eps at which the L-inf optimum reaches the boundary, scaled
    return linear_binary(w), x, y, eps, w


def test_square_finds_the_linear_l_inf_optimum_within_its_budget() -> None:
    model, x, y, eps_needed, w = _linear_case(1.0)
    for i in range(x.shape[0]):  # just above the needed eps: only the exact optimum vertex is adversarial
        eps = float(eps_needed[i]) * 1.02
        attack = Square(eps, max_queries=2000, seed=i)
        stats = attack.run(model, x[i:i + 1], y[i:i + 1]).stats
        assert bool(stats["fooled"][0]), f"sample {i} not fooled"
        assert int(stats["queries"][0]) <= 2000
    for i in range(x.shape[0]):  # just below: cannot be fooled; the search ends at the optimum vertex
        eps = float(eps_needed[i]) * 0.9  # (reached by ≈ 300 queries in every sample: 1000 leaves room)
        attack = Square(eps, max_queries=1000, seed=i)
        x_adv = attack(model, x[i:i + 1], y[i:i + 1])
        s = 1.0 if int(y[i]) == 1 else -1.0
        optimum = x[i:i + 1] - eps * s * torch.sign(w)
        torch.testing.assert_close(x_adv, optimum, rtol=0, atol=1e-6)


def test_nan_logits_raise_instead_of_passing_silently() -> None:
    class NaNModel(torch.nn.Module):
        def forward(self, z):
            return torch.full((z.shape[0], 10), float("nan")) + 0 * z.flatten(1).sum(1, keepdim=True)

    x, y = random_images(4, 0)
    for attack in (APGD(0.1, steps=2), Square(0.1, max_queries=5), PGD(0.1, steps=2)):
        with pytest.raises(NonFiniteLogitsError, match="non-finite logits for 4 of 4"):
            attack(NaNModel(), x, y)
