"""``SolverOptions``: one frozen, validated value passed from the ODE-Net through ``solve`` to the loop."""

import dataclasses

import pytest
import torch

from nets.odenet import ODENET_SOLVER, ODEBlock, ODEFunc
from stability import ImplicitOptions, ODEInputError, SolverOptions, odeint, solve

Y0 = torch.ones(2, 3, dtype=torch.float64)


def decay(t, y):
    return -y


def test_options_value_equals_the_keywords_and_keywords_override_it():
    options = SolverOptions(method="rk4", step_size=0.1)
    torch.testing.assert_close(solve(decay, Y0, [0.0, 1.0], options).ys,
                               odeint(decay, Y0, [0.0, 1.0], method="rk4", step_size=0.1), rtol=0, atol=0)
    euler = solve(decay, Y0, [0.0, 1.0], options, method="euler")  # a keyword overrides the value
    assert euler.method == "euler" and euler.stats.n_accepted == 10
    assert options.method == "rk4"  # the value itself is unchanged


def test_options_are_frozen_validated_once_and_replaced_not_mutated():
    fixed = SolverOptions(grid=torch.tensor([0.0, 0.5, 1.0]))
    assert fixed.grid == (0.0, 0.5, 1.0) and fixed.fixed_step
    options = SolverOptions(rtol=1e-5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rtol = 1e-3
    assert options.replace(rtol=1e-3).rtol == 1e-3 and options.rtol == 1e-5
    for bad, match in [
        (dict(rtol=-1.0), "rtol must be"),
        (dict(method="rk45"), "unknown method"),
        (dict(method="rk4"), "no embedded error estimate"),
        (dict(method="backward_euler"), "fixed-step: give step_size"),
        (dict(step_size=0.1, grid=(0.0, 1.0)), "either step_size or grid"),
        (dict(implicit=ImplicitOptions()), "implicit options apply to method='backward_euler' only"),
        (dict(checkpoint_every=3), "unknown options for gradient='backprop': checkpoint_every"),
        (dict(gradient="adjoint", adjoint_norm="max"), "adjoint_norm"),
        (dict(max_steps=1.5), "max_steps must be a positive integer"),
    ]:
        with pytest.raises(ODEInputError, match=match):
            SolverOptions(**bad)
    with pytest.raises(ODEInputError, match="unknown options .*rtoll"):
        solve(decay, Y0, [0.0, 1.0], rtoll=1e-3)
    with pytest.raises(ODEInputError, match="must be a SolverOptions"):
        solve(decay, Y0, [0.0, 1.0], [1e-3])
    torchdiffeq_style = odeint(decay, Y0, [0.0, 1.0], method="rk4", options={"step_size": 0.1})
    torch.testing.assert_close(torchdiffeq_style, odeint(decay, Y0, [0.0, 1.0], method="rk4", step_size=0.1))


def test_ode_block_takes_one_value_and_overrides_through_replace():
    torch.manual_seed(0)
    block = ODEBlock(ODEFunc(4), 1.0)
    assert block.options is ODENET_SOLVER and block.rtol == 1e-3
    with pytest.raises(AttributeError):
        block.method = "rk4"  # no attribute mutation: use_solver / solver_override
    x = torch.randn(2, 4, 3, 3)
    deployed = block(x)
    with block.solver_override(method="rk4", step_size=0.25):
        assert block.options == ODENET_SOLVER.replace(method="rk4", step_size=0.25)
        coarse = block(x)
    assert block.options is ODENET_SOLVER and not torch.allclose(coarse, deployed)
    with pytest.raises(ODEInputError, match="step_size must be positive"):
        block.use_solver(step_size=-1.0)
    assert block.options is ODENET_SOLVER  # a rejected change leaves the block as it was
    previous = block.use_solver(SolverOptions(rtol=1e-6, atol=1e-6))
    assert previous is ODENET_SOLVER and block.rtol == 1e-6
    fixed = ODEBlock(ODEFunc(4), 1.0, SolverOptions(method="heun", step_size=0.5), gradient="checkpoint")
    assert (fixed.method, fixed.step_size, fixed.gradient) == ("heun", 0.5, "checkpoint")
