"""The indicators of attack failure: each fires on a model or attack planted to trip it and stays quiet on a
plainly trained small CNN."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from attacks import APGD, PGD, Attack, SuiteAttack, preset, run_checks, run_suite, transfer
from attacks.indicators import (
    attack_failure_flags,
    incomplete_optimisation,
    silent_success,
    traced_attack,
    transfer_failure,
    unavailable_gradients,
    unconstrained_attack_failure,
    unstable_predictions,
)
from tests.attacks.support import small_cnn
from tests.attacks.trained import CLASSES, quadrant_images, trained_cnn

EPS = 0.2  # APGD leaves about two thirds of the quadrant images robust here
INDICATORS = ("unavailable-gradients", "unstable-predictions", "silent-success", "incomplete-optimisation",
              "transfer-failure", "unconstrained-attack-failure")


@pytest.fixture(scope="module")
def plain() -> tuple[nn.Module, Tensor, Tensor]:
    model = trained_cnn(0)
    x, y = quadrant_images(24, 7)
    with torch.no_grad():
        assert bool((model(x).argmax(1) == y).all())
    return model, x, y


def apgd(steps: int = 30) -> SuiteAttack:
    return SuiteAttack(f"APGD-CE-{steps}", lambda e: APGD(e, steps=steps))


class Quantized(nn.Module):
    """A non-differentiable preprocessing step: inputs rounded to 8 levels (zero gradient a.e.)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        return self.model(torch.round(z * 8) / 8)


class NoisyLogits(nn.Module):
    """A noisy forward pass: unit Gaussian noise on the logits of every call (seeded stream)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.generator = model, torch.Generator().manual_seed(0)

    def forward(self, z: Tensor) -> Tensor:
        logits = self.model(z)
        return logits + torch.randn(logits.shape, generator=self.generator)


class Forgetful(Attack):
    """Runs APGD (which queries adversarial points) and returns the clean input."""

    def _attack(self, model, x, y):
        APGD(EPS, steps=20)(model, x, y)
        return x.clone()


@pytest.mark.slow
def test_no_indicator_fires_on_a_plainly_trained_cnn(plain) -> None:
    model, x, y = plain
    other = trained_cnn(1)  # independently trained on the same task: a fair surrogate
    attacks = [apgd(), transfer("APGD-CE transfer from cnn-1", other, lambda e: APGD(e, steps=30))]
    flags = {flag.name: flag for flag in attack_failure_flags(model, x, y, EPS, attacks)}
    assert tuple(flags) == INDICATORS
    assert not any(flag.fired for flag in flags.values()), [f.verdict for f in flags.values() if f.fired]
    assert flags["transfer-failure"].numbers["APGD-CE transfer from cnn-1"]["fool_source"] > 0  # tested
    assert 0 < flags["silent-success"].numbers["returned_adversarial"] < x.shape[0]


def test_a_non_differentiable_preprocessing_step_fires_unavailable_gradients(plain) -> None:
    model, x, y = plain
    assert unavailable_gradients(Quantized(model), x, y).fired
    assert not unavailable_gradients(model, x, y).fired


def test_a_noisy_forward_pass_fires_unstable_predictions(plain) -> None:
    model, x, y = plain
    flag = unstable_predictions(NoisyLogits(model), x, y, EPS)
    assert flag.fired and flag.numbers["unstable_fraction"] > 0.5
    assert not unstable_predictions(model, x, y, EPS).fired


class SteepLinear(nn.Module):
    """Two classes, margin 200 (mean(x) - 1/2): smooth everywhere, steep enough that noise of 0.01 moves the
    loss of a sample on the boundary (mean 1/2) by more than 10%."""

    def forward(self, z: Tensor) -> Tensor:
        margin = 200 * (z.flatten(1).mean(1) - 0.5)
        return torch.stack([margin, torch.zeros_like(margin)], 1)


def test_a_few_boundary_samples_of_a_smooth_model_do_not_fire_unstable_predictions() -> None:
    """2 of 50 samples on the boundary of a smooth model move by curvature, not noise: under the share
    (0.1) the flag stays quiet; a 1% share would fire on them."""
    x = torch.full((50, 16), 0.9)
    x[:2] = 0.5
    y = torch.zeros(50, dtype=torch.long)
    flag = unstable_predictions(SteepLinear(), x, y, 0.1)
    assert flag.numbers["unstable_fraction"] == pytest.approx(0.04)
    assert not flag.fired
    assert unstable_predictions(SteepLinear(), x, y, 0.1, tolerance=0.01).fired


def test_an_attack_returning_the_clean_point_fires_silent_success(plain) -> None:
    model, x, y = plain
    _, fooled, paths = traced_attack(model, Forgetful(), x, y, EPS)
    flag = silent_success(fooled, paths)
    assert flag.fired and flag.numbers["silent"] == flag.numbers["found_on_path"] > 0
    _, fooled, paths = traced_attack(model, APGD(EPS, steps=20), x, y, EPS)
    assert not silent_success(fooled, paths).fired


def test_an_attack_stopped_after_two_steps_fires_incomplete_optimisation(plain) -> None:
    model, x, y = plain
    _, fooled, paths = traced_attack(model, APGD(EPS, steps=2), x, y, EPS)
    assert incomplete_optimisation(fooled, paths).fired
    _, fooled, paths = traced_attack(model, APGD(EPS, steps=100), x, y, EPS)
    flag = incomplete_optimisation(fooled, paths)
    assert not flag.fired and flag.numbers["failed_samples"] > 0


def test_a_transfer_from_an_unrelated_model_fires_transfer_failure(plain) -> None:
    model, x, y = plain
    unrelated = small_cnn(9, classes=CLASSES)  # untrained: its adversarials mean nothing for the model
    flag = transfer_failure(model, unrelated, APGD(EPS, steps=20), x, y, EPS)
    assert flag.fired and flag.numbers["fool_source"] > 0
    assert not transfer_failure(model, trained_cnn(1), APGD(EPS, steps=20), x, y, EPS).fired


def test_a_weak_attack_fires_unconstrained_attack_failure(plain) -> None:
    model, x, y = plain
    weak = lambda e: PGD(e, alpha=1e-3, steps=2, random_start=False)  # noqa: E731
    flag = unconstrained_attack_failure(model, x, y, weak)
    assert flag.fired and flag.numbers["eps"] == 1.0 and flag.numbers["survived_fraction"] > 0.5
    assert not unconstrained_attack_failure(model, x, y, lambda e: APGD(e, steps=20)).fired
    l2 = unconstrained_attack_failure(model, x, y, lambda e: APGD(e, steps=20, norm="l2"), norm="l2")
    assert not l2.fired and l2.numbers["eps"] == 8.0


@pytest.mark.slow
def test_run_checks_adds_the_indicators_with_their_evidence(plain) -> None:
    model, x, y = plain
    attacks = [SuiteAttack(a.name, lambda e, f=a.factory: _short(f(e)), a.kind) for a in preset("quick")]
    report = run_suite(model, x, y, [0.1, EPS], attacks, batch_size=12)
    flags = {f.name: f for f in run_checks(model, x, y, report, attacks=attacks, convergence_steps=(5, 10),
                                           convergence_samples=4, dependence_samples=4, indicator_samples=12)}
    assert set(INDICATORS) <= set(flags)
    assert flags["silent-success"].numbers["eps"] == EPS  # the eps whose worst case is nearest 50%
    assert flags["transfer-failure"].verdict.startswith("not tested")


def _short(attack: Attack) -> Attack:
    for name, value in (("steps", 10), ("max_queries", 50)):
        if hasattr(attack, name):
            setattr(attack, name, value)
    return attack
