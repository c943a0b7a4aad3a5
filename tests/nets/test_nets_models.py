"""Registered architectures: construction from the CLI's keyword arguments, the YOPO split, ODE-Net solver
options and statistics, input checks."""

import inspect
import json

import pytest
import torch
from torch import nn

import stability
from experiments.models import model_kwargs_for
from nets import available_models, build_model
from nets.normalization import Normalize
from nets.odenet import ODEBlock, ODEFunc, ODENet
from nets.resnet import cifar_blocks_per_stage
from nets.schemes import set_step_size, step_sizes
from nets.training import pop_solver_stats

SMALL = {  # registry name -> (dataset, extra kwargs keeping the test cheap)
    "resnet20": ("cifar10", {}),
    "resnet": ("cifar10", {"depth": 8}),
    "preact_resnet18": ("cifar10", {}),
    "mnist_resnet_small": ("mnist", {"width": 8}),
    "polynet": ("cifar10", {"blocks_per_stage": 1, "widths": [8, 16]}),
    "fractalnet": ("cifar10", {"columns": 2, "widths": [8, 16]}),
    "fractalnet_heun": ("cifar10", {"blocks_per_stage": 1}),
    "revnet": ("cifar10", {"blocks_per_stage": 1, "widths": [8, 16]}),
    "odenet_mnist_small": ("mnist", {"channels": 8}),
    "odenet_stem_head": ("mnist", {"channels": 8}),
    "odenet_cifar_small": ("cifar10", {"channels": 8}),
}


def _build(name):
    dataset, extra = SMALL[name]
    kwargs = model_kwargs_for(name, dataset, None, list(extra.items()))
    json.dumps(kwargs)  # what the training loop stores as model_spec
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    shape = (2, 1, 28, 28) if dataset == "mnist" else (2, 3, 32, 32)
    return model, torch.rand(shape)


def test_expected_names_are_registered():
    expected = {
        "resnet20",
        "resnet56",
        "preact_resnet18",
        "polynet",
        "polynet_implicit",
        "fractalnet",
        "fractalnet_heun",
        "revnet",
        "odenet_mnist_paper",
        "odenet_cifar_paper",
        "odenet_mnist_small",
        "mnist_resnet_small",
    }
    assert expected <= set(available_models())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_builds_from_cli_kwargs_and_splits_at_first_layer(name):
    model, x = _build(name)
    with torch.no_grad():
        logits = model(x)
        split = model.forward_from_first_layer(model.first_layer(x))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(split, logits)  # the YOPO protocol (attacks.yopo.split_first_layer)
    assert isinstance(model.first_layer[0], Normalize) and model.first_layer[0].mean is not None
    assert isinstance(model.first_layer[1], nn.Conv2d)


def test_step_size_reaches_every_block_through_the_registry():
    kwargs = model_kwargs_for("resnet56", "cifar10", 1e-4, [])
    model = build_model("resnet56", **kwargs)
    assert kwargs["step_size"] == 1e-4 and set(step_sizes(model)) == {1e-4}
    assert len(step_sizes(model)) == 27
    revnet = build_model("revnet", step_size=0.5, widths=[8, 16], blocks_per_stage=2)
    assert set(step_sizes(revnet)) == {0.5} and set_step_size(revnet, 0.25) == 5


def test_tiny_step_size_makes_the_euler_blocks_near_identity():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.rand(2, 3, 32, 32)
    stem = model.first_layer(x)
    blocks = [m for m in model.body if type(m).__name__ == "SchemeStep"]
    set_step_size(model, 1e-10)
    with torch.no_grad():
        y = model.body[0](stem)
        for block in blocks[:3]:  # the first stage: three Euler steps
            assert (block(y) - y).abs().max().item() < 1e-7 * max(1.0, y.abs().max().item())


def test_preact_resnet18_shape_and_size():
    model = build_model("preact_resnet18")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=0.01)


def test_paper_odenet_configurations():
    mnist = build_model("odenet_mnist_paper")
    cifar = build_model("odenet_cifar_paper")
    for model, channels, layers, t1 in ((mnist, 128, 4, 100.0), (cifar, 256, 5, 500.0)):
        block = model.ode_block
        assert block.t1 == t1 and block.method == "dopri5"
        convs = [m for m in block.func.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == layers and all(c.out_channels == channels for c in convs)


def test_odenet_block_is_stability_solve_and_counts_its_work():
    torch.manual_seed(0)
    model = ODENet(in_channels=1, channels=8, conv_layers=2, t1=0.5, rtol=1e-4, atol=1e-4).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
        stats = model.pop_solver_stats()
        state = model.body[:-1](model.first_layer(x))
        reference = stability.solve(model.ode_block.func, state, [0.0, 0.5], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.ode_block(state), reference.ys[-1])
        torch.testing.assert_close(model.head(reference.ys[-1]), logits)
    assert stats["solves"] == 1 and stats["accepted"] >= 1 and stats["nfe"] >= 6 * stats["accepted"]
    assert pop_solver_stats(model) == {
        "nfe": reference.stats.nfe,
        "sample_nfe": 3 * reference.stats.nfe,
        "accepted": reference.stats.n_accepted,
        "rejected": reference.stats.n_rejected,
        "solves": 1,
        "samples": 3,
    }
    assert model.pop_solver_stats() == dict.fromkeys(ODEBlock.STAT_KEYS, 0)


def test_odenet_fixed_step_mode_and_gradients():
    torch.manual_seed(0)
    model = build_model("odenet_mnist_small", channels=8, method="rk4", step_size=0.25)
    x = torch.rand(2, 1, 28, 28)
    model(x).sum().backward()
    stats = model.pop_solver_stats()
    assert stats["accepted"] == 4 and stats["rejected"] == 0 and stats["nfe"] == 16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_odenet_time_dependent_field():
    func = ODEFunc(4, conv_layers=1, time_dependent=True)
    y = torch.randn(1, 4, 3, 3)
    assert not torch.allclose(func(torch.tensor(0.0), y), func(torch.tensor(1.0), y))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="6k \\+ 2"):
        cifar_blocks_per_stage(21)
    with pytest.raises(ValueError, match="step_size"):
        build_model("resnet20", step_size=float("nan"))
    with pytest.raises(ValueError, match="step_size"):
        build_model("polynet", step_size=-1.0)
    with pytest.raises(ValueError, match="variant"):
        build_model("resnet20", variant="postact")
    with pytest.raises(stability.ODEInputError, match="unknown method"):
        build_model("resnet20", method="rk45")
    with pytest.raises(ValueError, match="t1"):
        ODEBlock(ODEFunc(4), t1=0.0)
    with pytest.raises(stability.ODEInputError, match="rtol"):
        build_model("odenet_mnist_small", rtol=-1.0)
    with pytest.raises(ValueError, match="std"):
        Normalize(3, [0.5] * 3, [0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="values"):
        Normalize(3, [0.5, 0.5], [0.2, 0.2])
    with pytest.raises(TypeError, match="bad arguments"):
        build_model("fractalnet", step_size=0.1)  # no identity paths, so no h
    model = build_model("mnist_resnet_small", width=4)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(TypeError, match="floating point"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    odenet = build_model("odenet_mnist_small", channels=8)
    with pytest.raises(stability.ODEInputError, match="NaN"):
        odenet(torch.full((1, 1, 28, 28), float("nan")))


@pytest.mark.skipif(
    "backward_euler" not in stability.SOLVERS,
    reason="waits for stability's backward_euler (SOLVER-GRADIENTS)",
)
def test_polynet_implicit_trains_through_the_implicit_blocks():
    from nets.schemes import BackwardEulerStep

    torch.manual_seed(0)
    model = build_model("polynet_implicit", blocks_per_stage=2, widths=[4, 8], step_size=0.5)
    blocks = [m for m in model.modules() if isinstance(m, BackwardEulerStep)]
    assert len(blocks) == 3
    for block in blocks:  # leave the Fixup identity start, so the implicit equation is non-trivial
        torch.nn.init.normal_(block.residual[3].weight, std=0.05)
    x = torch.rand(2, 3, 16, 16)
    state = model.body[0](model.first_layer(x))
    z = blocks[0](state)
    residual = (z - state - 0.5 * blocks[0].residual(z)).abs().max().item()
    assert (z - state).abs().max().item() > 1e-3 and residual < 1e-4
    model(x).logsumexp(dim=1).sum().backward()
    grads = [block.residual[3].weight.grad for block in blocks]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().max() > 0 for g in grads)


SOLVE_OPTIONS = inspect.signature(stability.solve).parameters


@pytest.mark.skipif("per_sample" not in SOLVE_OPTIONS, reason="waits for stability's per-sample mode")
def test_odenet_per_sample_mode_makes_samples_independent_of_their_batch():
    torch.manual_seed(0)
    model = build_model("odenet_mnist_small", channels=8, per_sample=True, time_dependent=True).eval()
    x = torch.rand(3, 1, 28, 28)
    x[2] *= 0.1  # a different sample, so the per-sample step sequences differ
    with torch.no_grad():
        together = model(x)
        stats = model.pop_solver_stats()
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert stats["samples"] == 3 and stats["solves"] == 1
    assert stats["nfe"] <= stats["sample_nfe"] <= 3 * stats["nfe"]


@pytest.mark.skipif("gradient" not in SOLVE_OPTIONS, reason="waits for stability's adjoint gradients")
def test_odenet_adjoint_gradient_matches_backprop_and_counts_backward_work():
    """Both gradients approximate the exact one to about the tolerance (measured: ~1e-2 apart in float64 at
    rtol = atol = 1e-6; convergence in the tolerance is slow because ReLU makes f only piecewise smooth)."""
    torch.manual_seed(1)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    grads = {}
    for gradient in ("backprop", "adjoint"):
        torch.manual_seed(0)
        model = build_model(
            "odenet_mnist_small", channels=4, gradient=gradient, rtol=1e-6, atol=1e-6
        ).double()
        model(x).logsumexp(dim=1).sum().backward()
        grads[gradient] = torch.cat([p.grad.flatten() for p in model.ode_block.func.parameters()])
        stats = model.pop_solver_stats()
        assert ("backward_nfe" in stats) == (gradient == "adjoint")
    assert stats["backward_nfe"] > 0
    relative_difference = (grads["adjoint"] - grads["backprop"]).norm() / grads["backprop"].norm()
    assert relative_difference.item() < 3e-2
