"""Agreement with torchattacks on a tiny model (skipped when torchattacks is not installed)."""

from __future__ import annotations

import pytest
import torch

from attacks import FGSM, PGD
from tests.attacks.support import random_images, small_cnn

torchattacks = pytest.importorskip("torchattacks")


def test_fgsm_and_deterministic_pgd_match_torchattacks() -> None:
    model = small_cnn(3).eval()
    x, y = random_images(64, 9)
    eps = 0.1
    assert torch.equal(FGSM(eps)(model, x, y), torchattacks.FGSM(model, eps=eps)(x, y))
    ours = PGD(eps, alpha=0.02, steps=10, random_start=False)(model, x, y)
    peer = torchattacks.PGD(model, eps=eps, alpha=0.02, steps=10, random_start=False)(x, y)
    # same iterates up to the rounding of the projection (x + clamp(x' - x) vs clamp(x', x - eps, x + eps))
    assert float((ours - peer).abs().max()) < 1e-6
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), model(peer).argmax(1))
