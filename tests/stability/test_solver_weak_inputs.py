"""Inputs that used to be handled weakly: each is now a clear error or a correct result."""

import pytest
import torch

from stability import (
    NonFiniteValueError,
    ODEInputError,
    SolverOptions,
    solve,
    solve_adjoint,
    solve_per_sample,
)
from tests.problems import van_der_pol


def cosine(t, y):  # y' = cos t: y(t) = sin t; y of shape [B, 1], t 0-d or per sample [B]
    return torch.cos(t).to(y.dtype).reshape(-1, 1) * torch.ones_like(y)


def test_late_times_keep_their_precision_with_a_float32_state():
    """t = 1e6 in float32 resolves only 0.0625: func gets t as the float64 tensor it was given."""
    t = torch.tensor([1e6, 1e6 + 1], dtype=torch.float64)
    y0 = torch.sin(t[:1]).float().reshape(1, 1)
    exact = float(torch.sin(t[1]))

    def error(**options) -> float:
        sol = solve(cosine, y0, t, rtol=1e-6, atol=1e-6, **options)
        return abs(float(sol.ys[-1, 0].double()) - exact)

    assert error() < 2e-6  # float32 rounding of the state, no more
    assert error(time_dtype=torch.float32) > 1e-4  # what rounding t to the state's dtype cost
    per_sample = solve_per_sample(cosine, y0.expand(3, 1).clone(), t, rtol=1e-6, atol=1e-6)
    assert per_sample.ys.dtype == torch.float32
    assert (per_sample.ys[-1].double() - exact).abs().max() < 2e-6
    with pytest.raises(ODEInputError, match="time_dtype must be"):
        SolverOptions(time_dtype=torch.float16)


def test_tolerances_stated_with_fixed_steps_are_refused():
    with pytest.raises(ODEInputError, match="rtol given with fixed steps .*would be ignored"):
        SolverOptions(method="dopri5", step_size=0.1, rtol=1e-12)
    with pytest.raises(ODEInputError, match="rtol and atol given with fixed steps"):
        solve(van_der_pol, torch.ones(2), [0.0, 1.0], grid=[0.0, 0.5, 1.0], rtol=1e-3, atol=1e-3)
    # tolerances carried over by replace (e.g. an ODE block switched to fixed steps) are not stated: fine
    fixed = SolverOptions(rtol=1e-3, atol=1e-3).replace(method="rk4", step_size=0.1)
    assert fixed.rtol == 1e-3 and fixed.replace(step_size=None, method="dopri5").rtol == 1e-3


def test_an_entry_point_refuses_a_keyword_contradicting_it():
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ODEInputError, match="implies gradient='adjoint', but gradient='backprop' was given"):
        solve_adjoint(van_der_pol, y0, [0.0, 1.0], gradient="backprop")
    with pytest.raises(ODEInputError, match="implies gradient='adjoint', but gradient='checkpoint'"):
        solve_adjoint(van_der_pol, y0, [0.0, 1.0], SolverOptions(gradient="checkpoint"))
    with pytest.raises(ODEInputError, match="implies per_sample=True"):
        solve_per_sample(van_der_pol, y0[None], [0.0, 1.0], per_sample=False)
    assert solve_adjoint(van_der_pol, y0, [0.0, 1.0], gradient="adjoint").ys.shape == (2, 2)


def test_named_norm_accepted_and_a_nan_norm_blamed_on_the_norm():
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert solve(van_der_pol, y0, [0.0, 1.0], norm="max").stats.nfe > 0
    with pytest.raises(ODEInputError, match="norm must be a function .*'rms', 'max'"):
        SolverOptions(norm="maximum")

    def nan_norm(error, y_old, y_new, rtol, atol):
        return float("nan")

    with pytest.raises(ODEInputError, match="norm returned nan .*not func"):
        solve(van_der_pol, y0, [0.0, 1.0], norm=nan_norm)
    with pytest.raises(ODEInputError, match="sample 0: norm returned nan"):
        solve_per_sample(van_der_pol, y0[None], [0.0, 1.0],
                         norm=lambda e, a, b, r, t: torch.full((e.shape[0],), float("nan")))

    def exploding(t, y):  # func's fault stays func's
        return y / (1.0 - t)

    with pytest.raises(NonFiniteValueError, match="func returned non-finite"):
        solve(exploding, y0 + 1, [0.0, 2.0], norm=lambda e, a, b, r, t: float("nan") if t > 0 else 0.0,
              first_step=1.0)


def test_tolerance_types():
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    f64 = dict(dtype=torch.float64)
    as_tensor = solve(van_der_pol, y0, [0.0, 1.0], rtol=torch.tensor(1e-3, **f64),
                      atol=torch.tensor(1e-6, **f64))
    as_float = solve(van_der_pol, y0, [0.0, 1.0], rtol=1e-3, atol=1e-6)
    assert as_tensor.stats.step_sizes == as_float.stats.step_sizes
    for bad, match in [(dict(rtol=True), "rtol must be a number, got bool True"),
                       (dict(atol="1e-3"), "atol must be a number, got str"),
                       (dict(rtol=torch.tensor([1e-3, 1e-4])), "shape \\(2,\\) without per_sample")]:
        with pytest.raises(ODEInputError, match=match):
            SolverOptions(**bad)


def test_meta_device_inputs_are_refused():
    with pytest.raises(ODEInputError, match="y0 is on the meta device"):
        solve(van_der_pol, torch.ones(2, device="meta"), [0.0, 1.0])
    with pytest.raises(ODEInputError, match="t is on the meta device"):
        solve(van_der_pol, torch.ones(2), torch.tensor([0.0, 1.0], device="meta"))


def clamping(t, y):
    y.clamp_(-1, 1)
    return -y


@pytest.mark.parametrize("options", [dict(), dict(per_sample=True), dict(method="rk4", step_size=0.1),
                                     dict(gradient="checkpoint"),
                                     dict(method="backward_euler", step_size=0.1)],
                         ids=["shared", "per-sample", "fixed", "checkpoint", "backward-euler"])
def test_in_place_func_never_changes_the_callers_y0(options):
    y0 = torch.tensor([[3.0, -2.0]], dtype=torch.float64)
    before = y0.clone()
    with pytest.raises(ODEInputError, match="modified its input y in place.*Your y0 is unchanged"):
        solve(clamping, y0, [0.0, 1.0], **options)
    assert torch.equal(y0, before)


def test_in_place_func_under_the_adjoint_without_gradients():
    y0 = torch.tensor([[3.0, -2.0]], dtype=torch.float64)
    with pytest.raises(ODEInputError, match="in place"):
        solve_adjoint(clamping, y0, [0.0, 1.0])
    assert torch.equal(y0, torch.tensor([[3.0, -2.0]], dtype=torch.float64))


@pytest.mark.slow
def test_compiled_wrong_shape_does_not_speak_of_per_sample_times():
    def wrong_shape(t, y):
        return torch.cat([y, y], dim=-1)

    with pytest.raises(ODEInputError) as caught:
        solve(wrong_shape, torch.ones(1, 2), [0.0, 1.0], compile=True, first_step=0.1)
    assert "per-sample" not in str(caught.value) and "shape (1, 4)" in str(caught.value)
