"""CUDA: events and throw=False on the GPU agree with the CPU (skipped without a CUDA device;
``python -m pytest tests/stability/test_events_cuda.py`` on a GPU machine)."""

import pytest
import torch

from stability import Event, Status, solve
from tests.stability.test_events import APEX, DragProjectile, ground, launch
from tests.stability.test_failure_status import oscillators, van_der_pol

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("per_sample,gradient", [(False, "backprop"), (False, "checkpoint"),
                                                 (True, "backprop"), (True, "checkpoint"), (True, "adjoint")])
def test_cuda_events_and_their_gradients_match_cpu(per_sample, gradient):
    results = {}
    for device in ("cpu", "cuda"):
        field = DragProjectile().to(device)
        y0 = launch([1.0, 0.5, 2.0], [3.0, 1.0, 0.5], [4.0, 6.0, -1.0]).to(device).requires_grad_(True)
        sol = solve(field, y0, [0.0, 0.3, 3.0], events=[ground(), APEX], per_sample=per_sample,
                    gradient=gradient, rtol=1e-9, atol=1e-9)
        assert sol.event_t.device.type == device and sol.ys.device.type == device
        grads = torch.autograd.grad(sol.event_t.sum() + sol.event_y[:, 0].sum(), [field.k, y0])
        results[device] = [sol.event_t.detach().cpu(), sol.event_index.cpu(), *(g.cpu() for g in grads)]
    assert torch.equal(results["cuda"][1], results["cpu"][1])
    for cuda, cpu in zip(results["cuda"], results["cpu"]):
        torch.testing.assert_close(cuda, cpu, rtol=1e-7, atol=1e-9)


def test_cuda_throw_false_matches_cpu():
    results = {}
    for device in ("cpu", "cuda"):
        sol = solve(van_der_pol, oscillators([1.0, 1000.0, 2.0]).to(device), [0.0, 1.0, 3.0], per_sample=True,
                    throw=False, max_steps=300, rtol=1e-6, atol=1e-6,
                    events=Event(lambda t, y: y[:, 0] + 1.5, terminal=True))
        results[device] = (sol.status, sol.t_reached, sol.ys.cpu())
    assert results["cuda"][0].tolist() == results["cpu"][0].tolist()
    assert Status.STIFF in results["cpu"][0].tolist()
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(results["cuda"][2], results["cpu"][2], rtol=1e-7, atol=1e-9, equal_nan=True)
