"""The mechanism artefact's measurements: the paired premium interval (coverage measured by simulation),
the input-gradient norms and the zero-gradient flag on a model whose gradient vanishes, per-image step counts,
and the plan at every scale (the smoke run itself is in test_experiments_paper's ``all`` run)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from experiments.paper import flow, mechanism, scales
from experiments.paper.premium import PairedDifference, images_for_half_width, paired, wilson


# ------------------------------------------------------------------------------------------ premium
@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60), st.integers(0, 60))
def test_paired_interval_holds_the_difference_and_is_antisymmetric(a, b, c, d) -> None:
    if a + b + c + d == 0:
        return
    table = PairedDifference(a, b, c, d)
    low, high = table.interval()
    assert -1.0 <= low <= table.difference <= high <= 1.0
    mirrored = PairedDifference(a, c, b, d).interval()  # with and without swapped
    assert mirrored == pytest.approx((-high, -low), abs=1e-12)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    for probabilities in ([0.05, 0.10, 0.02, 0.83], [0.30, 0.15, 0.15, 0.40], [0.0, 0.02, 0.0, 0.98]):
        truth = probabilities[1] - probabilities[2]
        tables = rng.multinomial(200, probabilities, size=2000)
        hits = [
            low <= truth <= high for low, high in (PairedDifference(*map(int, t)).interval() for t in tables)
        ]
        assert 0.93 <= float(np.mean(hits)) <= 0.995, (probabilities, float(np.mean(hits)))


def test_wilson_matches_the_closed_form_and_the_sizing_rule_holds() -> None:
    low, high = wilson(0, 100)
    assert low == pytest.approx(0.0, abs=1e-15) and high == pytest.approx(
        1.959963984540054**2 / (100 + 1.959963984540054**2)
    )
    n = images_for_half_width(0.05)
    assert n == 769
    half = (
        PairedDifference(n // 4, n // 4, n // 4, n - 3 * (n // 4)).interval()[1]
        - PairedDifference(n // 4, n // 4, n // 4, n - 3 * (n // 4)).difference
    )
    assert half <= 0.051  # half the images discordant: the worst case the rule sizes for
    with pytest.raises(ValueError, match="same non-zero number"):
        paired([True], [True, False])
    with pytest.raises(ValueError, match="successes"):
        wilson(3, 2)


# ------------------------------------------------------------------------------------------ gradients
class _TanhHead(nn.Module):
    """logits = 10 tanh(W x + b): with |b| = 100 every pre-activation saturates, so tanh' rounds to 0 in
    float32 and the input gradient vanishes exactly; with b = 0 it does not."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 3)
        nn.init.normal_(self.linear.weight, std=0.05)
        with torch.no_grad():
            self.linear.bias.copy_(torch.tensor([bias, -bias, -bias]))

    def forward(self, x):
        return 10 * torch.tanh(self.linear(x.flatten(1)))


def _zero_gradient_flag(model, x, y):
    from attacks import preset, run_suite
    from attacks.checks import report_flags

    report = run_suite(model, x, y, [0.1], preset("quick", steps=3, targets=1, queries=5), batch_size=8)
    return {flag.name: flag for flag in report_flags(report)}["gradients"]


def test_a_vanishing_input_gradient_is_caught_by_the_norms_and_the_flag() -> None:
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    saturated = _TanhHead(100.0).eval()
    y = saturated(x).argmax(1)
    assert (y == 0).all()  # every image classified (correctly) as class 0: every one is attacked
    norms = flow.gradient_norms(saturated, x, y, batch_size=3)
    assert norms["fraction_below"] == 1.0 and norms["median"] == 0.0 and norms["samples"] == 8
    flag = _zero_gradient_flag(saturated, x, y)
    assert flag.fired and flag.numbers["zero_gradient_fraction"] == 1.0
    # the same head unsaturated: gradients exist and nothing fires
    live = _TanhHead(0.0).eval()
    y_live = live(x).argmax(1)
    norms = flow.gradient_norms(live, x, y_live)
    assert norms["fraction_below"] == 0.0 and norms["p10"] > 1e-3
    assert not _zero_gradient_flag(live, x, y_live).fired


# ------------------------------------------------------------------------------------------ steps and NFE
def test_step_counts_are_exact_for_fixed_steps_and_per_image_for_dopri5() -> None:
    from nets.registry import build_model

    torch.manual_seed(0)
    x = torch.rand(5, 1, 12, 12)
    rk4 = build_model("odenet_mnist_small", channels=4, t1=10.0, method="rk4", step_size=10.0 / 7)
    counts = flow.step_counts(rk4, x, batch_size=2)
    assert (counts["steps_median"], counts["steps_p10"], counts["steps_p90"]) == (7, 7.0, 7.0)
    assert counts["nfe_mean"] == 28 and counts["samples"] == 5  # four stages per RK4 step
    dopri5 = build_model("odenet_mnist_small", channels=4, t1=10.0, field_gain=0.1)
    counts = flow.step_counts(dopri5, x, batch_size=2)
    backward = flow.backward_nfe(dopri5, x, torch.arange(5), batch_size=5)
    assert counts["steps_median"] >= 1 and counts["nfe_mean"] >= 6 * counts["steps_median"]
    assert backward["backprop_per_sample"] == counts["nfe_mean"] and backward["adjoint_per_sample"] > 0
    assert flow.step_counts(build_model("odenet_stem_head", channels=4), x) is None


def test_field_gain_sets_the_closing_norm_and_leaves_the_default_model_unchanged() -> None:
    from nets.registry import build_model

    torch.manual_seed(0)
    default = build_model("odenet_mnist_small", channels=4)
    torch.manual_seed(0)
    same = build_model("odenet_mnist_small", channels=4, field_gain=1.0)
    for (name, p), q in zip(default.state_dict().items(), same.state_dict().values()):
        assert torch.equal(p, q), name
    damped = build_model("odenet_mnist_small", channels=4, t1=100.0, field_gain=0.01)
    assert flow.field_gain(damped) == pytest.approx(0.01) and flow.field_gain(default) == 1.0
    with pytest.raises(ValueError, match="field_gain"):
        build_model("odenet_mnist_small", field_gain=0.0)


# ------------------------------------------------------------------------------------------ plans
def test_every_scale_has_the_three_integration_times_the_base_model_and_one_recipe() -> None:
    for scale in ("smoke", "cpu", "paper"):
        plan = mechanism.plan(scale)
        datasets = ("mnist", "cifar10") if scale == "paper" else ("mnist",)
        for dataset in datasets:
            specs = [plan.model_map[f"{dataset} t1={t1:g}"] for t1 in mechanism.T1[dataset]]
            base = plan.model_map[f"{dataset} base"]
            assert len({s.train for s in [*specs, base]}) == 1  # every model trained the same way
            built = [s.build() for s in specs]
            assert [b.ode_block.t1 for b in built] == list(mechanism.T1[dataset])
            assert [flow.field_gain(b) for b in built] == pytest.approx(
                [1 / t for t in mechanism.T1[dataset]]
            )
            assert all(b.ode_block.method == "dopri5" for b in built)
            stem_head = base.build()
            assert not hasattr(stem_head, "ode_block")
            assert stem_head.head[-1].in_features == built[0].head[-1].in_features  # the same head
            twin = mechanism.twin(scale, dataset, 12).build().ode_block
            assert (twin.method, twin.step_size, twin.t1) == ("rk4", mechanism.T1[dataset][-1] / 12, twin.t1)
    paper = mechanism.plan("paper").model_map
    assert paper["mnist t1=100"].name == "odenet_mnist_paper" and paper["mnist t1=100"].train.epochs == 100
    cpu = mechanism.plan("cpu")
    assert cpu.evaluation.samples == mechanism.CPU_SAMPLES and cpu.evaluation.protocol_steps == 40
    table1 = scales.table1_models("cpu", "mnist")
    assert cpu.model_map["mnist t1=1"].key() == table1["odenet"].key()  # Table 1's model, trained once
    assert cpu.model_map["mnist resnet"].key() == table1["resnet"].key()


def test_the_paper_scale_time_estimate_comes_from_timed_training_steps(tmp_path) -> None:
    from experiments.paper.runtime import Context
    from tests.nets.test_data import write_mnist

    write_mnist(tmp_path, n_train=8, n_test=2)
    ctx = Context(tmp_path / "out", str(tmp_path), progress=False, verify_data=False)
    spec = mechanism.plan("smoke").model_map["mnist base"]
    seconds = mechanism.estimate_seconds(spec, ctx, batches=1)
    assert math.isfinite(seconds) and seconds > 0


def _verdict_rows(premium: tuple[float, float, float], against_t1: tuple[float, float, float],
                  pgd_gap: float = 10.0) -> tuple[list[dict], dict]:
    """The rows and results `_verdict` reads: the t1 = 100 model at ε 0.1 with the given premium over the base
    model and over t1 = 1 (value, low, high), the base model, and gradient norms."""
    longest = {"dataset": "mnist", "model": "t1=100", "solver": "adaptive", "eps": 0.1, "pgd40": 20 + pgd_gap,
               "premium": premium[0], "premium_low": premium[1], "premium_high": premium[2],
               "long_premium": against_t1[0], "long_premium_low": against_t1[1],
               "long_premium_high": against_t1[2], "flags_fired": "transfer-failure"}
    base = {"dataset": "mnist", "model": "base", "solver": "none", "eps": 0.1, "pgd40": 20.0}
    norms = {"gradient_norms": {"median": 0.3, "fraction_below": 0.0}}
    return [longest, base], {"mnist t1=100": norms, "mnist t1=1": norms}


@pytest.mark.parametrize(
    "premium, against_t1, pgd_gap, says",
    [
        ((13.0, 9.4, 17.3), (-6.7, -11.1, -2.4), 19.3, "t1 = 1 model has more of it: integrating to t1 = 100 "
                                                       "lowers the worst case at ε 0.1"),
        ((17.5, 12.5, 23.4), (1.0, -3.7, 5.7), 23.0, "the t1 = 1 model has it too and no interval separates"),
        ((17.5, 12.5, 23.4), (6.0, 2.0, 10.0), 23.0, "long integration makes the model more robust"),
        ((1.0, -2.0, 4.0), (0.0, -2.0, 2.0), 30.0, "harder to attack with gradients, not more robust"),
        ((1.0, -2.0, 4.0), (0.0, -2.0, 2.0), 1.0, "No worst-case interval separates the premium from zero"),
    ],
)
def test_the_verdict_follows_the_intervals(premium, against_t1, pgd_gap, says) -> None:
    rows, results = _verdict_rows(premium, against_t1, pgd_gap)
    (text,) = mechanism._verdict(mechanism.plan("cpu"), rows, results)
    assert says in text, text
    if against_t1[2] < 0:  # a t1 = 100 model worse than t1 = 1 is never said to be inseparable from it
        assert "no interval separates" not in text
