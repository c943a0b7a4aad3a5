"""The binarization test: the planted adversarial exists, the suite finds it on a small ResNet and a small
ODE-net, and an attack with the wrong gradient sign fails the test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks import APGD, SuiteAttack, preset, run_suite
from attacks.binarization import binarization_test, binarize
from nets.registry import build_model

EPS = 0.1


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"width": 2} if "resnet" in name else {"channels": 2}
    return build_model(name, **kwargs).eval()


def images(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def quick_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    attacks = preset("quick", steps=10, targets=1, queries=20)
    report = run_suite(model, x, y, [EPS], attacks, batch_size=x.shape[0])
    found = [x_adv for (_, x_adv) in report.adversarials.values()]
    return found[0] if found else x


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_planted_adversarial_is_inside_the_ball_and_flips_the_binarized_classifier(norm: str) -> None:
    model, x = tiny("mnist_resnet_small"), images(1)[0]
    eps = EPS if norm == "linf" else 1.0
    binarized, x_adv = binarize(model, x, eps, norm, seed=3)
    size = (x_adv - x).abs().max() if norm == "linf" else (x_adv - x).norm()
    assert float(size) <= 0.9 * eps * (1 + 1e-6) and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        assert binarized(x[None]).argmax(1).item() == 0 and binarized(x_adv[None]).argmax(1).item() == 1
        assert binarized(x[None]).shape == (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist_resnet_small", "odenet_mnist_small"])
def test_the_suite_passes_and_a_wrong_sign_attack_fails(name: str) -> None:
    model, x = tiny(name), images(4)
    suite = binarization_test(model, x, EPS, quick_suite)
    assert int(suite.applicable.sum()) == 4 and suite.pass_rate >= 0.99
    # descending the loss of the clean class instead of ascending it: never leaves class 0
    wrong_sign = binarization_test(model, x, EPS, APGD(EPS, steps=10, targeted=True))
    assert wrong_sign.pass_rate <= 0.25


def test_attacks_that_do_not_apply_to_two_classes_are_skipped_by_the_suite() -> None:
    model, x = tiny("mnist_resnet_small"), images(1)
    binarized, _ = binarize(model, x[0], EPS, seed=0)
    attacks = [SuiteAttack(a.name, a.factory, a.kind) for a in preset("quick", steps=2, targets=1, queries=2)]
    report = run_suite(binarized, x, torch.zeros(1, dtype=torch.long), [EPS], attacks)
    assert list(report.skipped) == ["APGD-T-2x1"]
