"""``compile=True``: each explicit RK step as one ``torch.compile`` graph, equal to eager to rounding."""

import gc
import inspect
import warnings
import weakref

import pytest
import torch
from torch import nn

from stability import ODEInputError, SolverOptions, solve

Y0 = torch.tensor([[1.0, 0.5], [0.3, -0.2]])


class Field(nn.Module):
    """A tiny MLP field without Python side effects (a counter would recompile the step at every call)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, t, y):
        return self.net(y)


@pytest.fixture(scope="module")
def field():
    return Field()


def solved(field, **keywords):
    """(eager, compiled) solutions without grad; skips where torch.compile cannot compile on this platform."""
    with torch.no_grad():
        eager = solve(field, Y0, [0.0, 0.5, 10.0], **keywords)
        try:
            compiled = solve(field, Y0, [0.0, 0.5, 10.0], compile=True, **keywords)
        except ODEInputError:
            raise
        except Exception as error:  # noqa: BLE001 - inductor needs a working C++ toolchain
            pytest.skip(f"torch.compile unavailable here: {type(error).__name__}: {error}")
    return eager, compiled


def test_compile_is_off_by_default_and_a_keyword_of_the_entry_points():
    assert SolverOptions().compile is False
    assert inspect.signature(solve).parameters["compile"].default is False


@pytest.mark.slow
def test_compiled_dopri5_agrees_with_eager_to_rounding(field):
    eager, compiled = solved(field, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-5, atol=1e-6)
    # On this field the steps coincide; in general they need not: in float32 at rtol 1e-6 the error estimate
    # is at the rounding level and the compiled ratio may differ from eager's enough to flip a decision
    # (docs/solvers.md, bench/compile_rounding.py).
    assert (compiled.stats.n_accepted, compiled.stats.n_rejected, compiled.stats.nfe) == (
        eager.stats.n_accepted, eager.stats.n_rejected, eager.stats.nfe)
    assert eager.stats.n_accepted > 10


def test_compiled_fixed_step_rk4_agrees_with_eager_and_its_cache_keeps_no_func_alive():
    field = Field()
    eager, compiled = solved(field, method="rk4", step_size=0.25)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-5, atol=1e-6)
    assert compiled.stats.n_accepted == eager.stats.n_accepted == 40
    assert compiled.stats.nfe == eager.stats.nfe + 1  # non-FSAL: the first stage is evaluated in the graph
    alive = weakref.ref(field)
    del field
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("keywords, named", [
    (dict(per_sample=True), "per_sample=True"),
    (dict(method="backward_euler", step_size=0.1), "method='backward_euler'"),
    (dict(gradient="adjoint"), "gradient='adjoint'"),
])
def test_compile_with_what_it_cannot_compile_is_refused_naming_the_combination(keywords, named):
    with pytest.raises(ODEInputError, match="compile=True") as error:
        solve(Field(), Y0, [0.0, 1.0], compile=True, **keywords)
    assert named in str(error.value)
    with pytest.raises(ODEInputError, match="compile must be True or False"):
        SolverOptions(compile="yes")


class CountingField(Field):
    """The same field with an evaluation counter: a Python side effect that recompiles at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(y)


def test_recompiling_at_every_call_warns_that_the_step_now_runs_eagerly():
    # Before: once torch's recompile limit was reached the step silently ran eagerly (no speed-up, no word).
    field = CountingField()
    with torch._dynamo.config.patch(recompile_limit=2), pytest.warns(RuntimeWarning, match="side effect"):
        eager, compiled = solved(field, method="rk4", step_size=0.5)
    torch.testing.assert_close(compiled.ys, eager.ys)
    with warnings.catch_warnings():  # a field without side effects compiles once and stays quiet
        warnings.simplefilter("error", RuntimeWarning)
        solved(Field(), method="rk4", step_size=0.5)
