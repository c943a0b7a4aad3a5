"""The evaluation suite: worst case as a per-example AND, cascade, resume, sharding, and every flag firing on
a model built to trigger it while staying quiet on a plain CNN."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn

from attacks import Attack, AttackRecord, SuiteAttack, preset, run_checks, run_suite
from attacks.checks import GRAYS, constant_image_cap, gray_predictions
from tests.attacks.support import random_images, small_cnn

CHEAP = dict(convergence_steps=(2, 5), convergence_samples=6, dependence_samples=6)


class Threshold(nn.Module):
    """Class 1 iff pixel (0, 0) > 0.5 (logits [0.5 - p, p - 0.5])."""

    def forward(self, x: Tensor) -> Tensor:
        p = x.flatten(1)[:, :1]
        return torch.cat([0.5 - p, p - 0.5], dim=1)


class PushMarked(Attack):
    """Moves pixel (0, 0) by eps towards the other class, for samples whose pixel (0, 1) is ``marker``."""

    def __init__(self, eps: float, marker: float, *, seed: int | None = 0) -> None:
        super().__init__(seed=seed)
        self.eps, self.marker = eps, marker

    def _attack(self, model, x, y):
        x_adv = x.clone()
        marked = x.flatten(1)[:, 1] == self.marker
        direction = torch.where(y == 0, 1.0, -1.0)
        step = torch.where(marked, direction * self.eps, torch.zeros_like(direction))
        x_adv.view(x.shape[0], -1)[:, 0] += step
        return x_adv.clamp(0, 1)


def threshold_data(n: int = 12) -> tuple[Tensor, Tensor]:
    x = torch.full((n, 1, 2, 2), 0.2)
    x.view(n, -1)[:, 0] = torch.where(torch.arange(n) % 2 == 0, 0.45, 0.55)  # all within 0.05 of the boundary
    x.view(n, -1)[:, 1] = torch.where(torch.arange(n) % 3 == 0, 0.1, 0.3)
    return x, (x.view(n, -1)[:, 0] > 0.5).long()


@pytest.mark.parametrize("cascade", [True, False])
def test_worst_case_is_the_per_example_and_over_attacks(cascade: bool) -> None:
    x, y = threshold_data()
    attacks = [SuiteAttack("A", lambda e: PushMarked(e, 0.1)), SuiteAttack("B", lambda e: PushMarked(e, 0.3))]
    report = run_suite(Threshold(), x, y, [0.01, 0.1], attacks, batch_size=5, cascade=cascade)
    a, b = report.record("A", 0.1).fooled, report.record("B", 0.1).fooled
    assert torch.equal(a, x.view(12, -1)[:, 1] == 0.1) and torch.equal(b, x.view(12, -1)[:, 1] == 0.3)
    assert not bool((a & b).any())
    assert torch.equal(report.worst_case(0.1), ~a & ~b)
    assert report.worst_case_accuracy(0.1) == 0.0 and report.worst_case_accuracy(0.01) == 1.0
    assert report.robust_accuracy("A", 0.1) == pytest.approx(8 / 12)
    assert int(report.record("B", 0.1).attacked.sum()) == (8 if cascade else 12)


def test_attack_claims_are_verified_by_the_suite() -> None:
    class Liar(Attack):  # moves far outside the ball: never counted
        def _attack(self, model, x, y):
            return (1 - x)

    x, y = threshold_data()
    report = run_suite(Threshold(), x, y, [0.05], [SuiteAttack("liar", lambda e: Liar())])
    assert report.worst_case_accuracy(0.05) == 1.0


def test_resume_reuses_completed_records_and_recomputes_the_rest() -> None:
    model = small_cnn(0)
    x, _ = random_images(10, 0)
    y = model(x).argmax(1)
    attacks = preset("quick")[:1]
    full = run_suite(model, x, y, [0.05, 0.1], attacks)
    saved = {}
    run_suite(model, x, y, [0.05], attacks, on_record=lambda r: saved.update({(r.attack, r.eps): r}))
    restored = {k: type(v).from_json(v.to_json(), 10) for k, v in saved.items()}
    calls = []
    resumed = run_suite(model, x, y, [0.05, 0.1], attacks, completed=restored, progress=calls.append)
    assert sum(calls) == int(full.record(attacks[0].name, 0.1).attacked.sum())  # only eps = 0.1 ran again
    for eps in (0.05, 0.1):
        assert torch.equal(resumed.worst_case(eps), full.worst_case(eps))


def test_protocol_attacks_run_on_every_sample_beside_the_worst_case_and_never_in_it() -> None:
    x, y = threshold_data()
    y[0] = 1 - y[0]  # one sample misclassified
    cascade = [SuiteAttack("marked 0.1", lambda e: PushMarked(e, 0.1))]
    alone = run_suite(Threshold(), x, y, [0.1], cascade, batch_size=5)
    everything = SuiteAttack("everything", lambda e: PushMarked(e, 0.3), kind="protocol")
    first_four = SuiteAttack("first four", lambda e: PushMarked(e, 0.3), kind="protocol", samples=4)
    both = run_suite(Threshold(), x, y, [0.1], [everything, *cascade, first_four], batch_size=5)
    assert torch.equal(both.worst_case(0.1), alone.worst_case(0.1))  # never counted in the worst case
    assert both.attack_names == ["marked 0.1"] and both.protocol_names == ["everything", "first four"]
    record = both.protocol_record("everything", 0.1)
    assert bool(record.attacked.all())  # every sample, misclassified and already fooled ones too
    marked = x.view(12, -1)[:, 1] == 0.3
    assert torch.equal(record.fooled, marked | ~both.clean_correct)  # misclassified after the attack
    assert torch.equal(both.protocol_robust("everything", 0.1), both.clean_correct & ~marked)
    assert both.protocol_record("first four", 0.1).attacked.tolist() == [True] * 4 + [False] * 8
    assert len(both.protocol_robust("first four", 0.1)) == 4
    saved = both.protocol_record("first four", 0.1)
    restored = AttackRecord.from_json(json.loads(json.dumps(saved.to_json())), 12)
    assert torch.equal(restored.fooled, saved.fooled)
    assert restored.per_sample.keys() == saved.per_sample.keys()


def test_a_protocol_attack_without_per_batch_seeds_refuses_to_be_sharded() -> None:
    x, y = threshold_data()
    streamed = SuiteAttack("streamed", lambda e: PushMarked(e, 0.3), kind="protocol")
    with pytest.raises(ValueError, match="cannot be sharded"):
        run_suite(Threshold(), x, y, [0.1], [streamed], first_batch=2)
    with pytest.raises(ValueError, match="belong to protocol attacks"):
        SuiteAttack("cascade", lambda e: PushMarked(e, 0.3), samples=3)


def _shard(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = small_cnn(0)
        x, _ = random_images(20, 1)
        y = model(x).argmax(1)
        report = run_suite(model, x, y, [0.05, 0.2], preset("quick")[:2], batch_size=4, rank=rank,
                           world_size=world)
        if rank == 0:
            torch.save({e: report.worst_case(e) for e in (0.05, 0.2)}, out)
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process() -> None:
    model = small_cnn(0)
    x, _ = random_images(20, 1)
    y = model(x).argmax(1)
    single = run_suite(model, x, y, [0.05, 0.2], preset("quick")[:2], batch_size=4)
    with tempfile.TemporaryDirectory() as folder:
        store, out = os.path.join(folder, "store"), os.path.join(folder, "out.pt")
        mp.start_processes(_shard, args=(2, store, out), nprocs=2, start_method="spawn")
        sharded = torch.load(out, weights_only=True)
    for eps in (0.05, 0.2):
        assert torch.equal(sharded[eps], single.worst_case(eps))


# -- flags ---------------------------------------------------------------------------------------------------
def run_all(model: nn.Module, x: Tensor, y: Tensor, eps=(0.05, 0.3), attacks=None, **kwargs):
    attacks = attacks if attacks is not None else preset("quick")
    attacks = [SuiteAttack(a.name, _cheap(a.factory), a.kind) for a in attacks]
    report = run_suite(model, x, y, list(eps), attacks, batch_size=8)
    return {f.name: f for f in run_checks(model, x, y, report, **{**CHEAP, **kwargs})}, report


def _cheap(factory):
    def make(eps):
        attack = factory(eps)
        if hasattr(attack, "steps"):
            attack.steps = 5
        if hasattr(attack, "max_queries"):
            attack.max_queries = 30
        return attack
    return make


@pytest.fixture(scope="module")
def plain():
    model = small_cnn(0)
    x, _ = random_images(12, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_no_flag_fires_on_a_plain_cnn(plain) -> None:
    flags, report = run_all(*plain)
    fired = {name: f.verdict for name, f in flags.items() if f.fired}
    assert fired == {}
    assert set(flags) == {"gradient-free-or-transfer-wins", "protocol-wins", "gradients", "nonfinite-logits",
                          "eps-monotone", "eps-sanity", "more-iterations-help", "batch-dependence",
                          "randomness", "unavailable-gradients", "unstable-predictions", "silent-success",
                          "incomplete-optimisation", "transfer-failure", "unconstrained-attack-failure",
                          "nfe-spread", "gradient-agreement"}


def test_detached_gradients_fire_gradient_and_gradient_free_flags(plain) -> None:
    model, x, y = plain

    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, z):
            return self.inner(z.detach()) + 0 * z.flatten(1).sum(1, keepdim=True)

    flags, _ = run_all(Detached(), x, y)
    assert flags["gradients"].fired and flags["gradients"].numbers["zero_gradient_fraction"] == 1.0
    assert flags["gradient-free-or-transfer-wins"].fired


def test_stochastic_model_fires_randomness(plain) -> None:
    model, x, y = plain

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, z):
            return self.inner(z) + 1e-3 * torch.randn(z.shape[0], 10)

    torch.manual_seed(0)
    flags, _ = run_all(Noisy(), x, y)
    assert flags["randomness"].fired and flags["randomness"].numbers["max_logit_difference"] > 0


def test_batch_coupled_model_fires_batch_dependence(plain) -> None:
    model, x, y = plain

    class Coupled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, z):
            return self.inner(z) + 50.0 * (z - z.mean(0, keepdim=True)).flatten(1)[:, :10]

    flags, _ = run_all(Coupled(), x, Coupled()(x).argmax(1).detach())
    assert flags["batch-dependence"].fired


def test_nan_logits_fire_and_count_as_not_robust(plain) -> None:
    model, x, y = plain

    class NaNAbove(nn.Module):  # NaN as soon as any pixel moves above 0.97
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, z):
            logits = self.inner(z)
            bad = (z.flatten(1) > 0.97).any(1, keepdim=True)
            return torch.where(bad, torch.full_like(logits, float("nan")), logits)

    x = x.clamp(max=0.95)
    y = model(x).argmax(1).detach()
    flags, report = run_all(NaNAbove(), x, y, eps=(0.05,))
    assert flags["nonfinite-logits"].fired
    assert report.worst_case_accuracy(0.05) <= 1 - sum(r.nonfinite.sum() for r in report.records) / 12


def test_nan_logits_everywhere_are_not_randomness(plain) -> None:
    _, x, y = plain

    class AllNaN(nn.Module):  # deterministic: the same NaN logits at every call
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, z):
            return torch.full((z.shape[0], 10), float("nan")) * self.scale + 0 * z.flatten(1)[:, :1]

    flags, report = run_all(AllNaN(), x, y, eps=(0.05,))
    assert flags["nonfinite-logits"].fired
    assert not flags["randomness"].fired, flags["randomness"].verdict
    assert flags["randomness"].numbers["nonfinite_samples"] == 6  # the dependence subset
    assert "non-finite" in flags["randomness"].verdict
    assert report.worst_case_accuracy(0.05) == 0.0


def test_nan_in_one_call_only_is_randomness() -> None:
    from attacks.checks import randomness

    calls = []

    class Flaky(nn.Module):
        def forward(self, z):
            calls.append(1)
            out = z.flatten(1)[:, :3].clone()
            if len(calls) % 2:
                out[0, 0] = float("nan")
            return out

    noise = randomness(Flaky(), torch.rand(4, 1, 2, 2))
    assert noise["max_logit_difference"] == float("inf") and noise["changed_predictions"] <= 1


def test_an_out_of_range_label_is_refused_not_counted_misclassified() -> None:
    x, y = threshold_data()
    y[3] = 2  # the model has 2 classes
    attacks = [SuiteAttack("A", lambda e: PushMarked(e, 0.1))]
    with pytest.raises(ValueError, match="label 2 out of range for a model with 2 classes"):
        run_suite(Threshold(), x, y, [0.1], attacks)


def test_an_empty_batch_is_a_clear_error() -> None:
    x, y = threshold_data()
    attacks = [SuiteAttack("A", lambda e: PushMarked(e, 0.1))]
    with pytest.raises(ValueError, match="empty batch"):
        run_suite(Threshold(), x[:0], y[:0], [0.1], attacks)


def test_eps_sanity_fires_on_a_protocol_number_above_the_constant_image_cap(plain) -> None:
    model, x, y = plain
    possible, info = constant_image_cap(model, x, y, 0.5)
    assert info["covered_fraction"] == 1.0 and info["gray_in_every_ball"] is not None
    cap = float(possible.float().mean())
    assert cap <= float((y == info["gray_prediction"]).float().mean())  # the gray image lies in every ball
    flags, _ = run_all(model, x, y, eps=(0.1, 0.5), protocol={"paper PGD-40": {0.5: cap + 0.25}})
    assert flags["eps-sanity"].fired and "paper PGD-40" in flags["eps-sanity"].verdict


def test_gray_predictions_computed_once_give_the_same_cap_at_every_eps(plain) -> None:
    model, x, y = plain
    predicted = gray_predictions(model, x)
    assert predicted.shape == (len(GRAYS),)
    for eps in (0.05, 0.3, 0.5):
        alone, alone_info = constant_image_cap(model, x, y, eps)
        shared, shared_info = constant_image_cap(model, x, y, eps, predicted=predicted)
        assert torch.equal(alone, shared) and alone_info == shared_info
    with pytest.raises(ValueError, match="one class per gray"):
        constant_image_cap(model, x, y, 0.5, predicted=predicted[:3])


def test_weak_suite_fires_more_iterations_and_eps_monotone() -> None:
    x, y = threshold_data()

    class OnlySmall(Attack):  # succeeds at eps 0.1 only: a broken attack at the larger eps
        def __init__(self, eps):
            super().__init__()
            self.eps = eps

        def _attack(self, model, x, y):
            return PushMarked(self.eps, 0.1)(model, x, y) if self.eps < 0.15 else x.clone()

    attacks = [SuiteAttack("only-small", OnlySmall)]
    report = run_suite(Threshold(), x, y, [0.1, 0.2], attacks)
    flags = {f.name: f for f in run_checks(Threshold(), x, y, report, convergence_steps=(1, 5),
                                           convergence_samples=12, dependence_samples=4)}
    assert flags["eps-monotone"].fired
    assert report.worst_case_accuracy(0.2) <= report.worst_case_accuracy(0.1)  # carried up
    convergence = flags["more-iterations-help"]
    assert convergence.fired and convergence.numbers["missed_by_suite"] > 0


def test_attacks_needing_more_classes_are_skipped_and_named_not_crashed() -> None:
    # Before: a 2-class model crashed the quick preset at APGD-T ("needs >= 4 classes") after APGD-CE ran.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x = torch.rand(12, 1, 8, 8)
    y = model(x).argmax(dim=1)
    attacks = preset("quick", steps=5, targets=3, queries=20)
    report = run_suite(model, x, y, [0.05, 0.3], attacks)
    (skipped,) = [a.name for a in attacks if a.name.startswith("APGD-T")]
    assert report.skipped == {skipped: "needs >= 4 classes, the model returns 2"}
    assert skipped not in report.attack_names and len(report.attack_names) == len(attacks) - 1
    assert 0.0 <= report.worst_case_accuracy(0.3) <= report.worst_case_accuracy(0.05) <= 1.0
    with pytest.raises(ValueError, match="no attack of the suite applies to a model with 2 classes"):
        run_suite(model, x, y, [0.05], [a for a in attacks if a.name == skipped])
