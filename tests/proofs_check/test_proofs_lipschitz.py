"""proofs_check Lipschitz constants: certified upper bounds ≥ the truth ≥ the empirical lower bounds."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from proofs_check import (
    NotCertifiableError,
    conv2d_norm,
    jacobian_norm,
    linear_norm,
    lipschitz_lower,
    lipschitz_upper,
)
from proofs_check.lipschitz import register_lipschitz_rule
from proofs_check.random_networks import random_conv_residual, random_mlp_residual


def dense_conv_norm(conv: nn.Conv2d, shape) -> float:
    """‖A‖₂ of the convolution's linear part from its dense matrix (small shapes only)."""
    eye = torch.eye(math.prod(shape), dtype=torch.float64).reshape(-1, *shape)
    with torch.no_grad():
        matrix = conv._conv_forward(eye, conv.weight.double(), None).reshape(eye.shape[0], -1)
    return float(torch.linalg.matrix_norm(matrix, ord=2))


@st.composite
def conv_layers(draw):
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    padding_mode = draw(st.sampled_from(["zeros", "zeros", "circular"]))
    padding = draw(st.integers(0, (dilation * (kernel - 1)) // 2))
    size = draw(st.integers(dilation * (kernel - 1) + 1, 7))
    if padding_mode == "circular":
        size = stride * max(1, math.ceil(size / stride))
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, padding_mode=padding_mode)
    return conv.double(), (c_in, size, draw(st.integers(size, size + 2)) if padding_mode == "zeros" else size)


@given(layer=conv_layers())
def test_conv_certificate_brackets_the_exact_norm(layer):
    conv, shape = layer
    exact = dense_conv_norm(conv, shape)
    norm = conv2d_norm(conv, shape)
    assert norm.lower <= exact * (1 + 1e-9)
    assert exact <= norm.upper


def test_conv_certificate_is_tight_for_circular_padding_and_string_padding():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").double()
    norm = conv2d_norm(conv, (3, 6, 6), iterations=500)
    assert norm.upper == pytest.approx(dense_conv_norm(conv, (3, 6, 6)), rel=1e-8)
    same = nn.Conv2d(2, 2, 3, padding="same", dilation=2).double()
    assert dense_conv_norm(same, (2, 7, 6)) <= conv2d_norm(same, (2, 7, 6)).upper


def test_conv_refusals():
    with pytest.raises(NotCertifiableError, match="reflect"):
        conv2d_norm(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (1, 5, 5))
    with pytest.raises(ValueError, match="input channels"):
        conv2d_norm(nn.Conv2d(2, 1, 3), (3, 5, 5))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        conv2d_norm(nn.Conv2d(2, 1, 3), (2, 5))


@given(rows=st.integers(1, 6), cols=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_linear_norm_is_the_largest_singular_value(rows, cols, seed):
    weight = torch.randn(rows, cols, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    norm = linear_norm(weight)
    exact = float(torch.linalg.svdvals(weight)[0])
    assert norm.lower <= exact * (1 + 1e-12) and exact <= norm.upper <= exact * (1 + 1e-8)


def test_linear_norm_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        linear_norm(torch.tensor([[float("nan")]]))


@given(seed=st.integers(0, 2**31 - 1), activation=st.sampled_from(["relu", "tanh", "elu", "softplus"]))
def test_lower_bounds_never_exceed_the_certificate(seed, activation):
    residual = random_mlp_residual(5, 12, depth=3, activation=activation, lipschitz=None, seed=seed)
    upper = lipschitz_upper(residual, (5,)).upper
    y = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lower = lipschitz_lower(residual, y, ascent_steps=15, iterations=10, seed=seed)
    assert 0 < lower.value <= upper * (1 + 1e-9)
    assert lower.jacobian_norm <= upper * (1 + 1e-9)


def test_lower_bound_is_attained_for_a_linear_map():
    """For f = A (no activation) the secant ratio along the top singular vector is exactly ‖A‖₂."""
    residual = random_mlp_residual(4, 4, depth=1, lipschitz=None, seed=3)
    exact = float(torch.linalg.svdvals(residual[0].weight.detach())[0])
    lower = lipschitz_lower(residual, torch.randn(3, 4, dtype=torch.float64), ascent_steps=5)
    assert lower.value == pytest.approx(exact, rel=1e-9)
    assert lipschitz_upper(residual, (4,)).upper == pytest.approx(exact, rel=1e-8)


def test_jacobian_norm_of_a_conv_net_matches_the_dense_jacobian():
    residual, shape = random_conv_residual(2, 4, activation="tanh", seed=1)
    y = torch.randn(1, *shape, dtype=torch.float64)
    sigma, direction = jacobian_norm(residual, y, iterations=200)
    dense = torch.autograd.functional.jacobian(lambda v: residual(v.view(1, *shape)).flatten(), y.flatten())
    assert float(sigma[0]) == pytest.approx(float(torch.linalg.svdvals(dense)[0]), rel=1e-6)
    assert direction.shape == y.shape


def test_random_residual_is_rescaled_to_the_requested_constant():
    residual, shape = random_conv_residual(3, 6, lipschitz=2.5, seed=7)
    assert lipschitz_upper(residual, shape).upper == pytest.approx(2.5, rel=1e-10)


def test_certificate_covers_batch_norm_in_eval_and_refuses_training():
    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([0.25, 1.0, 4.0]))
        bn.weight.copy_(torch.tensor([1.0, -3.0, 1.0]))
    with pytest.raises(NotCertifiableError, match="eval"):
        lipschitz_upper(bn, (3, 2, 2))
    bn.eval()
    assert lipschitz_upper(bn, (3, 2, 2)).upper == pytest.approx(3 / math.sqrt(1 + bn.eps), rel=1e-8)


def test_group_norm_is_refused_by_default_and_worst_case_is_valid():
    norm = nn.GroupNorm(2, 4).double()
    with pytest.raises(NotCertifiableError, match="worst_case"):
        lipschitz_upper(norm, (4, 3, 3))
    certificate = lipschitz_upper(norm, (4, 3, 3), norm_layers="worst_case")
    assert certificate.assumptions and certificate.upper == pytest.approx(1 / math.sqrt(norm.eps), rel=1e-8)
    # Near-constant inputs come close to the worst case, which must still hold.
    y = 1.0 + 1e-5 * torch.randn(4, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert lipschitz_lower(norm, y, ascent_steps=20).value <= certificate.upper


@pytest.mark.parametrize(
    ("module", "constant"),
    [(nn.SiLU(), 1.0999), (nn.GELU(), 1.1290), (nn.GELU(approximate="tanh"), 1.1290), (nn.Mish(), 1.0885)],
)
def test_smooth_activation_constants_bound_their_derivative(module, constant):
    x = torch.linspace(-12, 12, 400_001, dtype=torch.float64, requires_grad=True)
    (derivative,) = torch.autograd.grad(module(x).sum(), x)
    assert derivative.abs().max() <= constant
    assert lipschitz_upper(module, (3,)).upper == constant


def test_unknown_layers_are_refused_and_rules_can_be_added():
    class Scale(nn.Module):
        def forward(self, x):
            return 3 * x

    with pytest.raises(NotCertifiableError, match="Scale"):
        lipschitz_upper(nn.Sequential(nn.ReLU(), Scale()), (2,))

    @register_lipschitz_rule(Scale)
    def _scale(module, shape, name, options):
        from proofs_check import LayerBound

        return [LayerBound(name, "Scale", 3.0, 3.0)]

    assert lipschitz_upper(nn.Sequential(nn.ReLU(), Scale()), (2,)).upper == 3.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz_upper(nn.ReLU(), (0, 3))
    with pytest.raises(ValueError, match="norm_layers"):
        lipschitz_upper(nn.ReLU(), (3,), norm_layers="ignore")
    with pytest.raises(ValueError, match="batch"):
        lipschitz_lower(nn.ReLU(), torch.ones(3))
