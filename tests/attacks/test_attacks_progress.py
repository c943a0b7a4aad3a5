"""Progress that tells the truth: long attacks report inside a call, the suite names the record running and
accounts for every model pass it plans, reused records are no work."""

from __future__ import annotations

import io

import pytest
import torch

from attacks import APGD, BoundaryAttack, Square, SuiteAttack, run_suite
from attacks.progress import BatchProgress, passes_per_sample
from experiments.progress import WorkBar
from tests.attacks.support import random_images, small_cnn


class Recorder:
    """A SuiteProgress that keeps every call in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.total = 0.0

    def start(self, total: float) -> None:
        self.total = total
        self.events.append(("start", total))

    def running(self, attack: str, eps: float) -> None:
        self.events.append(("running", attack, eps))

    def advance(self, work: float) -> None:
        self.events.append(("advance", work))

    def skip(self, work: float) -> None:
        self.events.append(("skip", work))

    def done(self) -> float:
        return sum(event[1] for event in self.events if event[0] == "advance")

    def skipped(self) -> float:
        return sum(event[1] for event in self.events if event[0] == "skip")


@pytest.fixture(scope="module")
def setting():
    model = small_cnn(0)
    x, _ = random_images(10, 0)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample clean-correct
    attacks = [
        SuiteAttack("APGD", lambda e: APGD(e, steps=3, restarts=2)),
        SuiteAttack("Square", lambda e: Square(e, max_queries=20), kind="score-based"),
        SuiteAttack("Boundary", lambda e: BoundaryAttack(max_queries=15), kind="decision-based"),
    ]
    return model, x, y, attacks


@pytest.mark.parametrize("attack", [Square(0.1, max_queries=30), BoundaryAttack(max_queries=25),
                                    APGD(0.1, steps=2, restarts=3)], ids=["Square", "Boundary", "APGD"])
def test_long_attacks_report_their_budget_spent_inside_a_call(attack) -> None:
    model = small_cnn(0)
    x, _ = random_images(6, 1)
    y = model(x).argmax(1)
    fractions: list[float] = []
    attack.on_progress = fractions.append
    plain = type(attack)(**_config(attack))
    assert torch.equal(attack(model, x, y), plain(model, x, y))  # the hook never changes a result
    assert len(fractions) >= 3 and fractions == sorted(fractions) and 0 < fractions[-1] <= 1


def _config(attack):
    if isinstance(attack, Square):
        return {"eps": attack.eps, "max_queries": attack.max_queries}
    if isinstance(attack, BoundaryAttack):
        return {"max_queries": attack.max_queries}
    return {"eps": attack.eps, "steps": attack.steps, "restarts": attack.restarts}


def test_the_suite_names_the_record_running_and_accounts_for_every_pass(setting) -> None:
    model, x, y, attacks = setting
    monitor, finished = Recorder(), []

    def on_record(record):
        running = [e for e in monitor.events if e[0] == "running"][-1]
        finished.append(((record.attack, record.eps), running[1:]))

    run_suite(model, x, y, [0.05, 0.2], attacks, batch_size=4, on_record=on_record, monitor=monitor)
    assert [done for done, _ in finished] == [named for _, named in finished]  # named while it ran
    assert monitor.total == pytest.approx(10 * (2 * (2 * 3 * 2 + 1) + 2 * 20 + 15))
    # every planned pass is done or skipped (never both); the samples the cascade drops are skipped, not done
    assert monitor.done() + monitor.skipped() == pytest.approx(monitor.total)
    assert monitor.skipped() > 0 and monitor.done() > 0
    square = monitor.events.index(("running", "Square", 0.05))
    after = monitor.events[square + 1:]
    steps = after[: next(i for i, e in enumerate(after) if e[0] == "running")]
    assert len(steps) > 3  # 3 batches of 4, 4, 2 images: per-query advances inside them


def test_reused_records_are_no_work_and_the_cascade_credits_what_it_skips(setting) -> None:
    model, x, y, attacks = setting
    first = run_suite(model, x, y, [0.05, 0.2], attacks, batch_size=4)
    completed = {(r.attack, r.eps): r for r in first.records if r.attack == "APGD"}
    monitor = Recorder()
    again = run_suite(model, x, y, [0.05, 0.2], attacks, batch_size=4, completed=completed, monitor=monitor)
    assert monitor.total == pytest.approx(10 * (2 * 20 + 15))
    assert monitor.done() + monitor.skipped() == pytest.approx(monitor.total)
    assert [r.fooled.tolist() for r in again.records] == [r.fooled.tolist() for r in first.records]


def test_passes_per_sample_and_batch_progress() -> None:
    assert passes_per_sample(Square(0.1, max_queries=40)) == 40
    assert passes_per_sample(APGD(0.1, steps=5, restarts=2)) == 21
    advanced: list[float] = []
    skipped: list[float] = []
    batch = BatchProgress(advanced.append, 10.0, skipped.append)
    batch(0.25)
    batch(0.2)  # never backwards
    batch.finish()  # stopped early: the unspent budget is skipped, not done
    assert advanced == [2.5] and skipped == [7.5]
    silent = BatchProgress(advanced.append, 4.0, skipped.append)
    silent.finish()  # reported nothing: it did the work
    assert advanced == [2.5, 4.0] and skipped == [7.5]


def test_the_work_bar_names_the_record_and_drops_reused_work_from_its_total() -> None:
    screen = io.StringIO()
    bar = WorkBar("[odenet] suite", file=screen)
    bar.start(100.0)
    bar.running("Square-1000", 0.1)
    bar.advance(10.0)
    bar.skip(50.0)
    assert bar.bar.total == 50.0 and bar.bar.n == 10.0
    bar.close()
    assert "[odenet] suite: Square-1000 @ ε=0.1" in screen.getvalue()
