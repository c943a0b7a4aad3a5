"""proofs_check on nets models: certified per-block constants and the bounds on real block stacks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nets.odenet import ConcatTimeConv2d, ODEBlock, ODEFunc
from nets.polynet import PlainResidual, PolyNet
from nets.resnet import ResNet
from nets.revnet import RevNet
from nets.schemes import set_step_size
from proofs_check import NotCertifiableError, lipschitz_upper, step_factor, verify_coupled, verify_steps
from proofs_check.networks import body_input, body_steps, revnet_stage
from proofs_check.verify import perturbation

SHAPE = (4, 8, 8)


def tiny(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics so that eval-mode BN is not the identity, then eval in float64."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.double().eval()


def images(channels: int = 1, size: int = 8, samples: int = 3) -> torch.Tensor:
    return torch.rand(
        samples, channels, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_scheme_block_factor_is_the_scheme_bound_of_its_residual(method):
    model = tiny(ResNet(2, (4, 8), in_channels=1, step_size=0.3, method=method))
    block = model.body[1]
    k = lipschitz_upper(block.residual, SHAPE).upper
    assert lipschitz_upper(block, SHAPE).upper == pytest.approx(step_factor(method, 0.3, k), rel=1e-12)


@pytest.mark.parametrize("h", [1.0, 0.1, 0.01])
def test_resnet_body_never_exceeds_its_bound(h):
    model = tiny(ResNet(2, (4, 8), in_channels=1, variant="euler"))
    set_step_size(model, h)
    y0 = body_input(model, images())
    steps, kinds = body_steps(model.body, y0.shape[1:])
    assert any("euler step" in kind for kind in kinds) and any("projection" in kind for kind in kinds)
    for direction in ("random", "jacobian"):
        epsilon = perturbation(y0, 1e-3, direction=direction, steps=steps, iterations=5)
        result = verify_steps(steps, y0, epsilon, on_violation="raise")
        assert np.all(result.tightness <= 1 + 1e-9)
    # the same stack with every factor f shrunk to 1 + (f − 1)/100 must be caught (h = 1: far from identity)
    if h == 1.0:
        shrunk = [type(s)(s.apply, s.t, s.h, 1 + (s.factor - 1) / 100) for s in steps]
        epsilon = perturbation(y0, 1e-3, direction="jacobian", steps=steps, iterations=10)
        assert verify_steps(shrunk, y0, epsilon, on_violation="ignore").violated


def test_revnet_couplings_both_ways():
    model = tiny(RevNet(1, (4, 8), in_channels=1, step_size=0.5))
    y0 = body_input(model, images())
    steps, kinds = body_steps(model.body, y0.shape[1:])
    assert any("revnet coupling" in kind for kind in kinds)
    assert not verify_steps(steps, y0, 1e-3 * torch.randn_like(y0), on_violation="raise").violated
    stage = model.body[0]
    couplings, matrices, sizes = revnet_stage(stage, y0.shape[1:])
    result = verify_coupled(
        couplings, matrices, y0, 1e-3 * torch.randn_like(y0), step_sizes=sizes, on_violation="raise"
    )
    scalar = np.prod([np.linalg.norm(m, 2) for m in matrices])
    assert np.all(result.bound[-1] <= scalar * (1 + 1e-9))


def test_polynet_blocks_poly_and_backward_euler():
    for block in ("poly", "backward_euler"):
        model = PolyNet(1, (4,), block=block, in_channels=1, step_size=0.5)
        with torch.no_grad():  # the Fixup init makes F = 0; give it a small non-zero last layer
            for module in model.modules():
                if isinstance(module, PlainResidual):
                    module[3].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
        model = tiny(model)
        y0 = body_input(model, images())
        steps, kinds = body_steps(model.body, y0.shape[1:])
        k = lipschitz_upper(model.body[1].residual, y0.shape[1:]).upper
        expected = 1 + 0.5 * k + (0.5 * k) ** 2 if block == "poly" else 1 / (1 - 0.5 * k)
        assert steps[1].factor == pytest.approx(expected, rel=1e-12)
        assert (steps[1].defect is not None) == (block == "backward_euler")
        assert not verify_steps(steps, y0, 1e-3 * torch.randn_like(y0), on_violation="raise").violated


def test_ode_blocks():
    func = ODEFunc(4, conv_layers=1).double()
    with pytest.raises(NotCertifiableError, match="GroupNorm"):
        lipschitz_upper(func, SHAPE)
    worst = lipschitz_upper(func, SHAPE, norm_layers="worst_case")
    assert worst.assumptions and worst.upper > 1e4  # two GroupNorms at max|γ|/√eps each: honest, vacuous
    adaptive = ODEBlock(func, 1.0)
    with pytest.raises(NotCertifiableError, match="adaptive"):
        lipschitz_upper(adaptive, SHAPE, norm_layers="worst_case")
    fixed = ODEBlock(func, 1.0, method="rk4", step_size=0.3)
    factor = lipschitz_upper(fixed, SHAPE, norm_layers="worst_case").upper
    expected = math.prod(step_factor("rk4", h, worst.upper) for h in (0.3, 0.3, 0.3, 1.0 - 0.9))
    assert factor == pytest.approx(expected, rel=1e-9)


def test_time_channel_is_excluded_from_the_constant():
    layer = ConcatTimeConv2d(3, 2).double()
    k = lipschitz_upper(layer, (3, 5, 5)).upper
    y_only = nn.Conv2d(3, 2, 3, padding=1, bias=False).double()
    with torch.no_grad():
        y_only.weight.copy_(layer.conv.weight[:, :3])
    assert k == pytest.approx(lipschitz_upper(y_only, (3, 5, 5)).upper, rel=1e-12)


def test_input_normalisation_rule():
    model = ResNet(1, (4,), in_channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)).double().eval()
    assert lipschitz_upper(model.first_layer[0], (3, 4, 4)).upper == pytest.approx(4.0, rel=1e-8)
