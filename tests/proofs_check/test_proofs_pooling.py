"""Pooling layers' certified Lipschitz constants: exact where windows do not overlap, never below what a
random pair of inputs or the power iteration shows, for random kernels, strides, paddings and modes."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from proofs_check import lipschitz_upper


def secant_ratio(module: nn.Module, shape, seed: int, pairs: int = 64) -> float:
    """The largest |f(x) − f(z)|/|x − z| over random pairs at random distances (a value K is at least)."""
    generator = torch.Generator().manual_seed(seed)
    best = 0.0
    with torch.no_grad():
        for _ in range(pairs):
            x = torch.randn(1, *shape, dtype=torch.float64, generator=generator)
            scale = 10 ** (-6 * float(torch.rand(1, generator=generator)))
            z = x + scale * torch.randn(1, *shape, dtype=torch.float64, generator=generator)
            best = max(best, float((module(x) - module(z)).norm() / (x - z).norm()))
    return best


@pytest.mark.parametrize("module, shape, exact", [
    (nn.AvgPool2d(2), (3, 8, 6), 1 / 2),
    (nn.AvgPool2d((2, 3)), (1, 4, 9), 1 / math.sqrt(6)),
    (nn.AdaptiveAvgPool2d(1), (4, 7, 5), 1 / math.sqrt(35)),
    (nn.AvgPool1d(4), (2, 12), 1 / 2),
    (nn.MaxPool2d(2), (3, 8, 8), 1.0),
    (nn.MaxPool1d(3), (2, 9), 1.0),
])
def test_windows_that_do_not_overlap_give_the_exact_constant(module, shape, exact):
    layer = lipschitz_upper(module, shape).layers[0]
    assert layer.upper == pytest.approx(exact, rel=1e-8)
    assert layer.lower == pytest.approx(exact, rel=1e-6)


@given(kernel=st.integers(1, 4), stride=st.integers(1, 4), padding=st.integers(0, 2), ceil=st.booleans(),
       include_pad=st.booleans(), size=st.integers(5, 11), seed=st.integers(0, 2**16))
def test_average_pooling_bound_holds_for_any_configuration(kernel, stride, padding, ceil, include_pad, size,
                                                           seed):
    padding = min(padding, kernel // 2)  # torch requires padding <= kernel / 2
    module = nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil, count_include_pad=include_pad)
    shape = (2, size, size + 1)
    layer = lipschitz_upper(module, shape, seed=seed).layers[0]
    assert layer.lower <= layer.upper
    assert secant_ratio(module, shape, seed) <= layer.upper


@given(kernel=st.integers(1, 4), stride=st.integers(1, 4), padding=st.integers(0, 2),
       dilation=st.integers(1, 2), ceil=st.booleans(), size=st.integers(7, 11), seed=st.integers(0, 2**16))
def test_max_pooling_bound_holds_for_any_configuration(kernel, stride, padding, dilation, ceil, size, seed):
    padding = min(padding, kernel // 2)
    module = nn.MaxPool2d(kernel, stride, padding, dilation=dilation, ceil_mode=ceil)
    shape = (2, size, size + 2)
    layer = lipschitz_upper(module, shape).layers[0]
    assert 1.0 <= layer.upper <= kernel * (1 + 1e-9)  # at most √(k·k) windows hold an input
    assert secant_ratio(module, shape, seed) <= layer.upper


def test_a_pooled_cnn_is_certified_through_its_pooling_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    certificate = lipschitz_upper(model, (1, 12, 12))
    assert [layer.kind for layer in certificate.layers][2] == "MaxPool2d"
    assert secant_ratio(model.double(), (1, 12, 12), seed=1) <= certificate.upper
