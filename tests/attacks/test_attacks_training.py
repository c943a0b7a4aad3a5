"""Adversarial-training losses (PGD-AT, TRADES, YOPO): exact gradients, protocol, and robustness gains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks import PGD, PGDAdversarialLoss, TRADESLoss, YOPOLoss, split_first_layer
from attacks.pgd import linf_box


def robust_and_nonrobust_features(n: int, seed: int, weak: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature 0 agrees with the label 90 % of the time with margin 0.3 (robust to eps = 0.12); the ``weak``
    others shift by only 0.08 (each is weakly, all together strongly predictive, and all flip under eps)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=generator)
    s = (2 * y - 1).float()
    flip = torch.where(torch.rand(n, generator=generator) < 0.1, -1.0, 1.0)
    robust = 0.5 + 0.3 * s * flip
    nonrobust = 0.5 + 0.08 * s[:, None] + 0.1 * torch.randn(n, weak, generator=generator)
    return torch.cat([robust[:, None], nonrobust], dim=1).clamp(0, 1), y


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(21, 16), nn.ReLU(), nn.Linear(16, 2))


def train(loss_fn, steps: int = 150, seed: int = 0) -> nn.Module:
    """The contract of nets.training: loss = loss_fn(model, x, y); loss.backward(); optimizer.step()."""
    model = mlp(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = robust_and_nonrobust_features(2048, seed=1)
    model.train()
    for step in range(steps):
        batch = slice((step * 128) % 2048, (step * 128) % 2048 + 128)
        optimizer.zero_grad()
        loss = loss_fn(model, x[batch], y[batch])
        loss.backward()
        optimizer.step()
    return model


def accuracies(model: nn.Module, eps: float) -> tuple[float, float]:
    x, y = robust_and_nonrobust_features(1000, seed=2)
    x_adv = PGD(eps, steps=20)(model, x, y)
    model.eval()
    with torch.no_grad():
        return (float((model(x).argmax(1) == y).float().mean()),
                float((model(x_adv).argmax(1) == y).float().mean()))


EPS = 0.12


@pytest.fixture(scope="module")
def natural() -> tuple[float, float]:
    return accuracies(train(lambda m, x, y: F.cross_entropy(m(x), y)), EPS)


@pytest.mark.parametrize(
    "loss_fn",
    [PGDAdversarialLoss(EPS, steps=5), TRADESLoss(EPS, steps=5, beta=6.0), YOPOLoss(EPS, m=3, n=3)],
    ids=["pgd-at", "trades", "yopo-3-3"],
)
def test_adversarial_training_raises_robust_accuracy(natural: tuple[float, float], loss_fn) -> None:
    natural_clean, natural_robust = natural
    clean, robust = accuracies(train(loss_fn), EPS)
    assert natural_clean > 0.95 and natural_robust < 0.4  # the natural model leans on non-robust features
    assert robust > natural_robust + 0.4 and robust > 0.8
    assert clean > 0.8


def test_pgd_at_loss_is_the_cross_entropy_at_the_pgd_point_and_leaves_grads_alone() -> None:
    model = mlp()
    model.train()
    x, y = robust_and_nonrobust_features(32, seed=3)
    loss = PGDAdversarialLoss(EPS, steps=4, seed=9)(model, x, y)
    assert all(p.grad is None for p in model.parameters())  # the attack did not touch .grad
    assert model.training
    x_adv = PGD(EPS, steps=4, seed=9)(model, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x_adv), y))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_trades_reduces_to_cross_entropy_without_perturbation_or_beta() -> None:
    model = mlp()
    x, y = robust_and_nonrobust_features(32, seed=4)
    expected = F.cross_entropy(model(x), y)
    assert torch.allclose(TRADESLoss(0.0, steps=2)(model, x, y), expected)
    assert torch.allclose(TRADESLoss(EPS, steps=2, beta=0.0)(model, x, y), expected)
    loss = TRADESLoss(EPS, steps=3, beta=1.0)(model, x, y)
    assert float(loss.detach()) > float(expected.detach())  # the KL term is positive once x_adv differs
    x_adv = TRADESLoss(EPS, steps=3).adversarial_examples(model, x)
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6 and float(x_adv.min()) >= 0


def _reference_yopo_gradients(model: nn.Sequential, x, y, eps: float, m: int, n: int, alpha: float,
                              seed: int) -> list[torch.Tensor]:
    """The authors' formulation with .backward() accumulation: full passes give every weight gradient and the
    costate z.grad; the first layer then gets the Hamiltonian gradient at the updated perturbation."""
    first, rest = model[0], model[1:]
    lower, upper = linf_box(x, eps)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    x_adv = torch.clamp(x + (2 * noise - 1) * eps, min=lower, max=upper)
    model.zero_grad()
    for _ in range(m):
        z = first(x_adv)
        z.retain_grad()
        F.cross_entropy(rest(z), y).backward()
        p = z.grad.detach()
        for _ in range(n):
            x_adv = x_adv.detach().requires_grad_(True)
            (first(x_adv) * p).sum().backward(inputs=[x_adv])
            x_adv = torch.clamp(x_adv + alpha * x_adv.grad.sign(), min=lower, max=upper).detach()
        (first(x_adv) * p).sum().backward(inputs=list(first.parameters()))
    return [p.grad / m for p in model.parameters()]


@pytest.mark.parametrize(("m", "n"), [(1, 0), (2, 2), (3, 1)])
def test_yopo_gradient_matches_the_reference_formulation(m: int, n: int) -> None:
    model = mlp(5)
    x, y = robust_and_nonrobust_features(16, seed=5)
    reference = _reference_yopo_gradients(model, x, y, EPS, m, n, alpha=0.03, seed=7)
    model.zero_grad()
    loss = YOPOLoss(EPS, m=m, n=n, alpha=0.03, seed=7)(model, x, y)
    loss.backward()
    for got, want in zip((p.grad for p in model.parameters()), reference):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    if (m, n) == (1, 0):  # same point: the Hamiltonian gradient duplicates the first layer's CE gradient
        model.zero_grad()
        lower, upper = linf_box(x, EPS)
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
        F.cross_entropy(model(torch.clamp(x + (2 * noise - 1) * EPS, min=lower, max=upper)), y).backward()
        assert torch.allclose(reference[0], 2 * model[0].weight.grad, rtol=1e-5)
        assert torch.allclose(reference[2], model[2].weight.grad, rtol=1e-5)


class ExposesFirstLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first_layer = nn.Linear(21, 8)
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(8, 2))

    def forward_from_first_layer(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_first_layer(self.first_layer(x))


def test_first_layer_protocol() -> None:
    model = ExposesFirstLayer()
    first, rest = split_first_layer(model)
    assert first is model.first_layer
    x, y = robust_and_nonrobust_features(8, seed=6)
    assert torch.equal(rest(first(x)), model(x))
    loss = YOPOLoss(EPS, m=2, n=2)(model, x, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    sequential = mlp()
    first, rest = split_first_layer(sequential)
    assert first is sequential[0]
    with pytest.raises(TypeError, match="first_layer"):
        YOPOLoss(EPS)(nn.Linear(21, 2), x, y)


def test_yopo_loss_value_is_the_mean_cross_entropy() -> None:
    model = mlp()
    x, y = robust_and_nonrobust_features(16, seed=8)
    loss = YOPOLoss(0.0, m=3, n=1)(model, x, y)  # eps = 0: every pass is at x
    assert torch.allclose(loss, F.cross_entropy(model(x), y), rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: PGDAdversarialLoss(0.3, steps=3), lambda: TRADESLoss(0.3, steps=3),
                                  lambda: YOPOLoss(0.3, m=2, n=3)])
def test_linear_eps_warmup_ramps_eps_and_keeps_the_step_ratio(make) -> None:
    from attacks import LinearEpsWarmup
    from nets.training import BatchInfo

    loss = make()
    ratio = (loss.attack.alpha if hasattr(loss, "attack") else loss.alpha) / 0.3
    warmup = LinearEpsWarmup(loss, 0.3, warmup_steps=10, steps_per_epoch=4)
    assert loss.eps == pytest.approx(0.03)
    seen = []
    for epoch in (1, 2, 3, 4):
        for step in range(4):
            warmup(BatchInfo(epoch, step, torch.zeros(()), 8, 1e-3))
            seen.append(loss.eps)
    assert seen[:9] == pytest.approx([0.03 * (t + 2) for t in range(9)])
    assert seen[9:] == pytest.approx([0.3] * 7)
    alpha = loss.attack.alpha if hasattr(loss, "attack") else loss.alpha
    assert alpha == pytest.approx(ratio * 0.3)
    warmup.start_at(4)
    assert loss.eps == pytest.approx(0.15)
