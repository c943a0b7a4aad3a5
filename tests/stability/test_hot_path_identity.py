"""The shortcuts of the eager shared step are the computations they replace, bit for bit: the first step in
Python floats, the error ratio that keeps |y_{n+1}|, and keyword options validated once."""

import math
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stability import ODEInputError, solve
from stability.options import as_options
from stability.step_control import SteppedErrorRatio, error_ratio, initial_step, rms


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _tensor_formula(func, t0, y0, f0, direction, order, rtol, atol, interval) -> float:
    """The shared first step as 0-d float64 tensor operations (the code the float version replaced)."""
    scale = y0.abs().mul(rtol).add_(atol)
    d0 = rms(y0 / scale).double()
    d1 = rms(f0 / scale).double()
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / torch.where(small, 1.0, d1))
    h0 = h0.clamp(max=interval)
    step = direction * h0
    f1 = func(t0 + float(step), torch.add(y0, f0, alpha=float(step)))
    d2 = rms((f1 - f0) / scale).double() / h0
    h1 = torch.where((d1 <= 1e-15) & (d2 <= 1e-15), torch.clamp(h0 * 1e-3, min=1e-6),
                     (0.01 / torch.maximum(d1, d2).clamp(min=1e-300)) ** (1.0 / (order + 1)))
    h1 = torch.where(~torch.isfinite(d2), h0 * 1e-3, h1)
    return float(torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, interval)))


@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 6), float32=st.booleans(),
       log_rtol=st.floats(-10, -1), atol=st.sampled_from([0.0, 1e-12, 1e-8, 1e-4, 1.0]),
       zero=st.booleans(), direction=st.sampled_from([1.0, -1.0]), order=st.sampled_from([1, 2, 4]),
       interval=st.sampled_from([1e-9, 1e-3, 1.0, 50.0]), field_scale=st.sampled_from([0.0, 1e-8, 1.0, 1e6]))
def test_shared_initial_step_is_the_tensor_formula_bit_for_bit(seed, dim, float32, log_rtol, atol, zero,
                                                               direction, order, interval, field_scale):
    dtype = torch.float32 if float32 else torch.float64
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(dim, generator=g, dtype=dtype)
    if zero:
        y0[0] = 0.0  # with atol = 0: 0/0 in the norms, NaN that both versions must carry alike
    matrix = torch.randn(dim, dim, generator=g, dtype=dtype) * field_scale
    calls = []

    def func(t, y):
        calls.append((t, y.clone()))
        return torch.tanh(matrix @ y) + t

    rtol = 10.0**log_rtol
    f0 = func(0.3, y0)
    calls.clear()
    ours = initial_step(func, 0.3, y0, f0, direction, order, rtol, atol, interval)
    reference = _tensor_formula(func, 0.3, y0, f0, direction, order, rtol, atol, interval)
    assert _bits(ours) == _bits(reference) or (math.isnan(ours) and math.isnan(reference))
    (t_a, y_a), (t_b, y_b) = calls  # the probe evaluation at the same time and state
    assert _bits(t_a) == _bits(t_b)
    torch.testing.assert_close(y_a, y_b, rtol=0, atol=0, equal_nan=True)


def _steps(dtype, requires_grad=False):
    """A run of (error, y_old, y_new) like a solve's: accepted steps chain y_new into y_old; a rejection
    retries from the same y_old."""
    g = torch.Generator().manual_seed(3)
    y = torch.randn(3, 4, generator=g, dtype=dtype).requires_grad_(requires_grad)
    calls = []
    for accepted in (True, True, False, True, False, False, True, True):
        y_new = y + 0.1 * torch.randn(3, 4, generator=g, dtype=dtype)
        error = 1e-4 * torch.randn(3, 4, generator=g, dtype=dtype)
        calls.append((error, y, y_new))
        if accepted:
            y = y_new
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("rtol, atol", [(1e-6, 1e-6), (1e-3, 0.0), (0.0, 1e-5), (1e-7, 1e-9)])
def test_stepped_error_ratio_is_error_ratio_bit_for_bit(dtype, requires_grad, rtol, atol):
    stepped = SteppedErrorRatio()
    for error, y_old, y_new in _steps(dtype, requires_grad):
        assert _bits(stepped(error, y_old, y_new, rtol, atol)) == _bits(error_ratio(error, y_old, y_new, rtol,
                                                                                     atol))


def test_stepped_error_ratio_notices_a_state_changed_in_place():
    """|y| is kept with y's version: a y_old changed in place since is measured anew."""
    stepped = SteppedErrorRatio()
    error, y_old, y_new = _steps(torch.float64)[0]
    stepped(error, y_old, y_new, 1e-6, 1e-6)
    with torch.no_grad():
        y_new.mul_(3.0)
    y_next = y_new + 0.5
    assert stepped(error, y_new, y_next, 1e-6, 1e-6) == error_ratio(error, y_new, y_next, 1e-6, 1e-6)


def test_stepped_error_ratio_hands_other_cases_to_error_ratio():
    """float16 states (measured in float32) and per-sample tolerance tensors go to ``error_ratio``."""
    error, y_old, y_new = _steps(torch.float64)[1]
    stepped = SteppedErrorRatio()
    half = [x.half() for x in (error, y_old, y_new)]
    assert stepped(*half, 1e-2, 1e-3) == error_ratio(*half, 1e-2, 1e-3)
    rtol = torch.full((3,), 1e-5, dtype=torch.float64)
    assert torch.equal(torch.as_tensor(stepped(error, y_old, y_new, rtol, 1e-6)),
                       torch.as_tensor(error_ratio(error, y_old, y_new, rtol, 1e-6)))


def test_a_solve_keeps_the_step_before_a_rejection():
    """Across rejections the kept |y| is the rejected y_{n+1}'s: the retry measures y_n anew and the solve
    equals one with the plain error_ratio as its norm, step for step."""
    def van_der_pol(t, y):
        return torch.stack([y[1], 5.0 * (1 - y[0] ** 2) * y[1] - y[0]])

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    ours = solve(van_der_pol, y0, [0.0, 5.0], rtol=1e-6, atol=1e-8)
    plain = solve(van_der_pol, y0, [0.0, 5.0], rtol=1e-6, atol=1e-8,
                  norm=lambda e, a, b, r, s: error_ratio(e, a, b, r, s))
    assert ours.stats.n_rejected > 0
    assert torch.equal(ours.ys, plain.ys)
    assert ours.stats.step_sizes == plain.stats.step_sizes


def test_keyword_options_are_validated_once_per_distinct_value():
    keywords = dict(method="dopri5", rtol=1e-6, atol=1e-6)
    first = as_options(None, keywords)
    assert as_options(None, dict(keywords)) is first
    assert as_options(None, dict(keywords, rtol=1e-5)).rtol == 1e-5
    # 1, 1.0 and True hash alike; each is validated on its own (True is refused every time)
    assert as_options(None, dict(rtol=1)).rtol == 1
    for _ in range(2):
        with pytest.raises(ODEInputError, match="rtol must be a number, got bool True"):
            as_options(None, dict(rtol=True))
    # 0.0 and -0.0 compare equal; each keeps its own sign
    assert math.copysign(1.0, as_options(None, dict(atol=0.0)).atol) == 1.0
    assert math.copysign(1.0, as_options(None, dict(atol=-0.0)).atol) == -1.0
    # implied values are part of the key: a contradiction raises however often it is asked
    for _ in range(2):
        with pytest.raises(ODEInputError, match="implies gradient='adjoint'"):
            as_options(None, dict(gradient="backprop"), gradient="adjoint")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_time_func_receives_is_torch_full_of_it(dtype):
    """``OdeSolver.fun`` makes t with ``new_full`` on a kept 0-d tensor: the value ``torch.full`` gives."""
    from stability.solver import Dopri5

    seen = []
    solver = Dopri5(lambda t, y: seen.append(t) or -y, 0.0, torch.ones(2, dtype=dtype), 1.0, rtol=0.2,
                    atol=1e-3)
    for t in (0.1, 1 / 3, 1e6 + 0.123456789, -2.5e-300, 70000.0):
        solver.fun(t, solver.y)
        expected = torch.full((), t, dtype=solver._time_dtype)
        assert seen[-1].dtype == expected.dtype and seen[-1].shape == ()
        assert torch.equal(seen[-1], expected)
