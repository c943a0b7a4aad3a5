"""Device and dtype agnosticism: the same solve on every available device, float32 and float64."""

import pytest
import torch

from stability import odeint, solve

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method,options", [("dopri5", {"rtol": 1e-5, "atol": 1e-6}),
                                            ("rk4", {"step_size": 0.05})])
def test_solution_stays_on_device_and_dtype_and_matches_cpu_float64(device, dtype, method, options):
    matrix = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=dtype, device=device)
    y0 = torch.tensor([[1.0, 0.0], [0.5, -1.0]], dtype=dtype, device=device, requires_grad=True)
    seen_times = []

    def field(t, y):
        seen_times.append((t.device.type, t.dtype))
        return y @ matrix.T

    ys = odeint(field, y0, torch.tensor([0.0, 0.5, 1.0]), method=method, **options)
    assert ys.device.type == device and ys.dtype == dtype
    assert set(seen_times) == {(device, dtype)}
    ys[-1].sum().backward()
    assert y0.grad.device.type == device and torch.isfinite(y0.grad).all()
    reference = odeint(lambda t, y: y @ matrix.double().cpu().T, y0.detach().double().cpu(), [0.0, 0.5, 1.0],
                       rtol=1e-10, atol=1e-10)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-5
    torch.testing.assert_close(ys.detach().double().cpu(), reference, rtol=tolerance, atol=tolerance)


def test_float32_and_float64_take_comparable_adaptive_paths():
    field = lambda t, y: torch.sin(y) - 0.3 * y  # noqa: E731
    runs = {dtype: solve(field, torch.linspace(-2, 2, 8, dtype=dtype), [0.0, 3.0], rtol=1e-5, atol=1e-5)
            for dtype in (torch.float32, torch.float64)}
    assert abs(runs[torch.float32].stats.n_accepted - runs[torch.float64].stats.n_accepted) <= 1
    torch.testing.assert_close(runs[torch.float32].ys.double(), runs[torch.float64].ys, rtol=1e-4, atol=1e-5)
