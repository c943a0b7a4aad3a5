"""The blocks of ``nets`` are the numerical schemes they claim to be: ResNet = Euler, PolyNet ≈ backward
Euler, FractalNet C = 2 with identity paths = Heun, RevNet = invertible coupled Euler."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stability
from nets.fractalnet import FractalBlock
from nets.polynet import PlainResidual
from nets.resnet import ResNet, residual_function
from nets.revnet import AdditiveCoupling, RevNet
from nets.schemes import BackwardEulerStep, PolyStep, SchemeStep, set_step_size, step_sizes


def _randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def _one_euler_step(residual: nn.Module, y: torch.Tensor, h: float) -> torch.Tensor:
    """One Euler step of dy/dt = F(y) through stability's odeint front door (not through stability.step)."""
    return stability.odeint(lambda t, state: residual(state), y, [0.0, h], method="euler", step_size=h)[-1]


@pytest.mark.parametrize("variant", ["euler", "preact"])
@pytest.mark.parametrize("h", [1.0, 0.1, 1e-3])
@pytest.mark.parametrize("training", [False, True])
def test_resnet_block_is_one_euler_step(variant, h, training):
    torch.manual_seed(0)
    model = ResNet(1, (8, 16), in_channels=3, step_size=h, variant=variant)
    _randomize_batchnorm(model)
    model.train(training)
    block = next(m for m in model.modules() if isinstance(m, SchemeStep))
    y = torch.randn(4, 8, 6, 6)
    with torch.no_grad():
        out = block(y)
        reference = _one_euler_step(block.residual, y, h)
        by_hand = y + h * block.residual(y)
    assert block.method == "euler" and block.step_size == h
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, by_hand, rtol=1e-6, atol=1e-6)
    increment = (out - y).norm() / block.residual(y).norm()
    assert increment.item() == pytest.approx(h, rel=1e-4)  # the residual branch really is scaled by h


def test_original_resnet_block_is_euler_step_then_relu():
    torch.manual_seed(0)
    model = ResNet(2, (8,), step_size=0.5, variant="original").eval()
    _randomize_batchnorm(model)
    body = list(model.body)
    index = next(i for i, m in enumerate(body) if isinstance(m, SchemeStep))
    block, relu = body[index], body[index + 1]
    assert isinstance(relu, nn.ReLU)
    y = torch.rand(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(relu(block(y)), torch.relu(_one_euler_step(block.residual, y, 0.5)))


def test_resnet_depth_and_step_size_control():
    model = ResNet(9, (16, 32, 64), step_size=0.1)  # ResNet56: 9 blocks per stage, 2 of them projections
    steps = [m for m in model.modules() if isinstance(m, SchemeStep)]
    assert len(steps) == 3 * 9 - 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 56  # 55 convolutions + the linear layer
    assert set(step_sizes(model)) == {0.1}
    assert set_step_size(model, 1e-10) == 27  # 25 Euler steps + 2 projection blocks
    assert set(step_sizes(model)) == {1e-10}
    with pytest.raises(ValueError):
        set_step_size(model, 0.0)


def test_heun_block_is_fractal_join_of_two_euler_steps_and_identity():
    torch.manual_seed(1)
    residual = residual_function("euler", 6, 6).eval()
    _randomize_batchnorm(residual)
    h = 0.3
    block = SchemeStep(residual, h, method="heun")
    y = torch.randn(3, 6, 4, 4)
    with torch.no_grad():
        euler = lambda state: state + h * residual(state)  # noqa: E731
        fractal_join = 0.5 * euler(euler(y)) + 0.5 * y
        trapezoid = y + h / 2 * (residual(y) + residual(y + h * residual(y)))
        reference = stability.odeint(lambda t, s: residual(s), y, [0.0, h], method="heun", step_size=h)[-1]
        out = block(y)
    for expected in (fractal_join, trapezoid, reference):
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def _conv_bn_relu(layer: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
    conv, bn = layer[0], layer[1]
    out = F.conv2d(z, conv.weight, padding=1)
    out = (out - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    return torch.relu(out * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))


def test_fractal_rule_c2_matches_its_algebraic_expansion():
    """f_2(z) = ½ f_1^b(f_1^a(z)) + ½ f_1^c(z), with the three conv-BN-ReLU layers written out by hand."""
    torch.manual_seed(2)
    block = FractalBlock(2, 3, 5).eval()
    _randomize_batchnorm(block)
    z = torch.randn(2, 3, 7, 7)
    layer_a, layer_b, layer_c = block.deep_first.shallow, block.deep_second.shallow, block.shallow
    with torch.no_grad():
        expansion = 0.5 * _conv_bn_relu(layer_b, _conv_bn_relu(layer_a, z)) + 0.5 * _conv_bn_relu(layer_c, z)
        torch.testing.assert_close(block(z), expansion, rtol=1e-5, atol=1e-6)
    assert len({id(layer_a), id(layer_b), id(layer_c)}) == 3  # three distinct f_1's


@pytest.mark.parametrize("columns", [1, 2, 3, 4])
def test_fractal_block_depth(columns):
    block = FractalBlock(columns, 2, 2)
    convs = sum(isinstance(m, nn.Conv2d) for m in block.modules())
    assert convs == 2**columns - 1  # f_{C+1} has two copies of f_C plus one f_1


# --- PolyNet against backward Euler ------------------------------------------------------------------------


def _observed_order(hs, errors) -> float:
    slope, _ = np.polyfit(np.log(hs), np.log(errors), 1)
    return float(slope)


class Linear(nn.Module):
    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = matrix

    def forward(self, y):
        return y @ self.matrix.T


class TanhLayer(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, y):
        return torch.tanh(y @ self.weight.T + self.bias)


def _backward_euler_reference(residual, y, h, iterations=200):
    """Test oracle: the fixed point z = y + h·F(z) by Picard iteration (a contraction for these small h)."""
    z = y.clone()
    for _ in range(iterations):
        z = y + h * residual(z)
    assert (z - y - h * residual(z)).abs().max() < 1e-14
    return z


HS = [2.0**-k for k in range(3, 9)]


def test_polynet_minus_backward_euler_is_third_order_for_linear_f():
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(8, 8, generator=generator, dtype=torch.float64) / math.sqrt(8)
    y = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    residual = Linear(a)
    errors, scaled = [], []
    for h in HS:
        poly = PolyStep(residual, h)(y)
        exact = torch.linalg.solve(torch.eye(8, dtype=torch.float64) - h * a, y.T).T  # (I − hA)⁻¹ y
        errors.append((poly - exact).norm().item())
        scaled.append(errors[-1] / h**3)
    assert _observed_order(HS, errors) == pytest.approx(3.0, abs=0.1)
    leading = (y @ torch.linalg.matrix_power(a, 3).T).norm().item()  # ‖A³y‖: the first omitted Neumann term
    assert scaled[-1] == pytest.approx(leading, rel=0.05)


@pytest.mark.parametrize(("bias_scale", "order"), [(0.5, 1.0), (0.0, 2.0)])
def test_polynet_minus_backward_euler_order_for_nonlinear_f(bias_scale, order):
    """F(y) = tanh(Wy + b): PolyNet's hF(hF(y)) tends to hF(0), so the gap to backward Euler is O(h) when
    F(0) = tanh(b) ≠ 0, and O(h²) (h²(F'(0) − F'(y))F(y)) when F(0) = 0 — never the linear case's O(h³)."""
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(6, 6, generator=generator, dtype=torch.float64) / math.sqrt(6)
    bias = bias_scale * torch.randn(6, generator=generator, dtype=torch.float64)
    y = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    residual = TanhLayer(weight, bias)
    errors = [
        (PolyStep(residual, h)(y) - _backward_euler_reference(residual, y, h)).norm().item() for h in HS
    ]
    assert _observed_order(HS, errors) == pytest.approx(order, abs=0.15)


@pytest.mark.skipif(
    "backward_euler" not in stability.SOLVERS,
    reason="waits for stability's backward_euler (SOLVER-GRADIENTS)",
)
def test_backward_euler_block_solves_the_implicit_step():
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64) / math.sqrt(6)
    y = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    h = 0.2
    block = BackwardEulerStep(Linear(a), h)
    exact = torch.linalg.solve(torch.eye(6, dtype=torch.float64) - h * a, y.T).T
    torch.testing.assert_close(block(y), exact, rtol=1e-8, atol=1e-8)
    weight = torch.randn(6, 6, generator=generator, dtype=torch.float64) / math.sqrt(6)
    residual = TanhLayer(weight, 0.3 * torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(
        BackwardEulerStep(residual, h)(y), _backward_euler_reference(residual, y, h), rtol=1e-8, atol=1e-8
    )


def test_poly_block_in_a_network_uses_one_shared_residual():
    torch.manual_seed(6)
    residual = PlainResidual(4)
    for p in residual.parameters():
        nn.init.normal_(p, std=0.2)
    block = PolyStep(residual, 0.7)
    y = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        hf = 0.7 * residual(y)
        torch.testing.assert_close(block(y), y + hf + 0.7 * residual(hf))


# --- RevNet -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h", [1.0, 0.1])
@pytest.mark.parametrize("training", [False, True])
def test_additive_coupling_inverse_reconstructs_input(h, training):
    torch.manual_seed(7)
    coupling = AdditiveCoupling(residual_function("preact", 8, 8), residual_function("preact", 8, 8), h)
    _randomize_batchnorm(coupling)
    coupling.train(training)
    x = torch.randn(4, 16, 8, 8)
    with torch.no_grad():
        out = coupling(x)
        back = coupling.inverse(out)
    assert (out - x).abs().max() > 0.05 * h  # the block does something
    assert (back - x).abs().max().item() <= 1e-5


def test_coupling_is_euler_on_the_partitioned_system():
    torch.manual_seed(8)
    f1, f2 = residual_function("preact", 3, 3).eval(), residual_function("preact", 3, 3).eval()
    coupling = AdditiveCoupling(f1, f2, 0.25)
    state = torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        x, y = state.chunk(2, dim=1)
        x_new = x + 0.25 * f1(y)
        torch.testing.assert_close(coupling(state), torch.cat([x_new, y + 0.25 * f2(x_new)], dim=1))


def test_revnet_stage_inverse_reconstructs_input():
    torch.manual_seed(9)
    model = RevNet(3, (16, 32), in_channels=3).eval()
    _randomize_batchnorm(model)
    stage = model.body[0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert (stage.inverse(stage(x)) - x).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="even number of channels"):
        stage[0](torch.randn(1, 15, 4, 4))
