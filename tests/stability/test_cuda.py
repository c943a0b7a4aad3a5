"""CUDA: solvers, ODE-nets, the attack suite and training run on the GPU and agree with the CPU.

Skipped without a CUDA device (CI has none); on a GPU machine:
``python -m pytest tests/stability/test_cuda.py``.
"""

import pytest
import torch

import stability
from attacks import APGD, PGD, Square, preset, run_suite
from nets import build_model
from nets.datasets.dataset import ImageDataset
from nets.training import TrainConfig, load_trained_model, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _field():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6)).double()


@pytest.mark.parametrize("gradient", ["backprop", "checkpoint", "adjoint"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_cuda_solve_and_gradients_match_cpu(gradient, per_sample):
    results = {}
    for device in ("cpu", "cuda"):
        field = _field().to(device)
        y0 = torch.linspace(-1, 1, 24, dtype=torch.float64, device=device).reshape(4, 6).requires_grad_()
        extra = {"adjoint_params": tuple(field.parameters())} if gradient == "adjoint" else {}
        solution = stability.solve(lambda t, y, f=field: f(y), y0, [0.0, 1.5], rtol=1e-8, atol=1e-9,
                                   gradient=gradient, per_sample=per_sample, **extra)
        assert solution.ys.device.type == device
        solution.ys[-1].pow(2).sum().backward()
        grads = [p.grad.cpu() for p in field.parameters()]
        results[device] = (solution.ys.detach().cpu(), y0.grad.cpu(), grads)
    tolerance = 1e-6 if gradient == "adjoint" else 1e-9
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], rtol=tolerance, atol=tolerance)
    for cuda_grad, cpu_grad in zip(results["cuda"][2], results["cpu"][2]):
        torch.testing.assert_close(cuda_grad, cpu_grad, rtol=tolerance, atol=tolerance)


def test_cuda_odenet_per_sample_equals_each_sample_alone():
    torch.manual_seed(0)
    model = build_model("odenet_mnist_small").cuda().eval()
    x = torch.rand(6, 1, 28, 28, device="cuda")
    with model.ode_block.solver_override(per_sample=True):
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def _tiny_mnist(n: int, seed: int) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=generator, dtype=torch.uint8)
    images[torch.arange(n), 0, 2 + 2 * labels, 4:24] = 255  # a class-coded stripe: learnable in one epoch
    return ImageDataset(images, labels, name="mnist", split="train")


def test_cuda_training_writes_a_checkpoint_that_loads_on_cpu(tmp_path):
    model = build_model("mnist_resnet_small", width=4, blocks_per_stage=1)
    config = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-2)
    result = train(model, _tiny_mnist(640, 0), _tiny_mnist(100, 1), config, tmp_path, device="cuda",
                   model_spec={"name": "mnist_resnet_small", "kwargs": {"width": 4, "blocks_per_stage": 1}},
                   progress=False)
    assert result.test_accuracy is not None and result.test_accuracy > 0.5
    loaded = load_trained_model(tmp_path, device="cpu")
    assert next(loaded.parameters()).device.type == "cpu"


def test_cuda_attacks_and_suite_stay_on_device_and_verify():
    torch.manual_seed(0)
    model = build_model("mnist_resnet_small", width=4, blocks_per_stage=1).cuda().eval()
    x = torch.rand(8, 1, 28, 28, device="cuda")
    y = model(x).argmax(1)
    for attack in (PGD(eps=0.1, steps=5), APGD(eps=0.1, steps=10), Square(eps=0.1, max_queries=20)):
        x_adv = attack(model, x, y)
        assert x_adv.device.type == "cuda"
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    report = run_suite(model, x, y, [0.05, 0.1], preset("quick", steps=5, targets=1, queries=10))
    assert 0.0 <= report.worst_case_accuracy(0.1) <= report.worst_case_accuracy(0.05) <= 1.0
