"""Results that cannot go stale: cached models, paper evaluations and records carry the version of the code
that made them; a change to that code recomputes them and names them (``--reuse-stale`` reuses and names).
Records carry a content checksum: an edited or malformed record is recomputed and named, never a crash.

The source is versioned from a temporary copy of the packages (``code_version.ROOT`` pointed at it), so a
test can edit a dependency as a developer would, without touching the real tree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from experiments.models import TrainedModel
from experiments.paper import measure, scales
from experiments.paper.runtime import Context
from experiments.paper.specs import EvalSpec, model
from storage import code_version
from storage.code_version import CodeGuard, describe_change
from storage.records import RecordStore
from tests.nets.test_data import write_mnist

REAL_ROOT = code_version.ROOT


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A copy of the versioned packages that ``code_version`` reads instead of the real tree."""
    root = tmp_path / "source"
    for part in ("stability", "nets", "attacks", "experiments"):
        shutil.copytree(REAL_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_version, "ROOT", root)
    code_version.part_digest.cache_clear()
    yield root
    code_version.part_digest.cache_clear()


def edit(root: Path, relative: str, old: str, new: str) -> None:
    """Change ``old`` to ``new`` in one source file of the copy, then forget the cached digests (a new
    process would read the changed source)."""
    path = root / relative
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not once in {relative}"
    path.write_text(text.replace(old, new))
    code_version.part_digest.cache_clear()


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def test_the_version_changes_with_the_source_of_each_part_only(source) -> None:
    before = code_version.code_version(code_version.EVALUATION_CODE)
    assert set(before) == set(code_version.EVALUATION_CODE) and len(set(before.values())) == len(before)
    assert code_version.code_version(code_version.EVALUATION_CODE) == before  # deterministic
    edit(source, "attacks/checks.py", "tolerance: float = 0.01,", "tolerance: float = 0.02,")
    after = code_version.code_version(code_version.EVALUATION_CODE)
    assert {part for part in before if before[part] != after[part]} == {"attacks"}
    assert describe_change(before, after).startswith(f"attacks {before['attacks'][:8]} -> ")
    assert describe_change(None, after) == "no code version recorded (made before versioning)"
    with pytest.raises(FileNotFoundError, match="no Python source"):
        code_version.code_version(["nowhere"])


def _context(tmp_path: Path, guard: CodeGuard) -> Context:
    if not (tmp_path / "data").is_dir():
        write_mnist(tmp_path / "data", n_train=8, n_test=6)
    return Context(tmp_path / "out", str(tmp_path / "data"), progress=False, verify_data=False, guard=guard)


def _tiny_spec():
    return model("mnist_resnet_small", "mnist", scales.smoke_training(), in_channels=1, width=2,
                 blocks_per_stage=1)


def test_a_change_in_the_convergence_check_recomputes_the_cached_evaluation_and_names_it(
    source, tmp_path
) -> None:
    torch.manual_seed(0)
    net = _tiny_spec().build().eval()
    entry = TrainedModel("mnist resnet", _tiny_spec(), net, tmp_path, {})
    spec = EvalSpec(samples=4, steps=1, target_classes=1, queries=2, protocol_steps=1,
                    convergence_steps=(1, 2), convergence_samples=2, dependence_samples=2, batch_size=4)
    data = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3]))

    first_log = Log()
    first, _ = measure.honest(_context(tmp_path, CodeGuard(log=first_log)), entry, (0.1,), spec, data)
    assert first_log == []
    again_log = Log()
    again, _ = measure.honest(_context(tmp_path, CodeGuard(log=again_log)), entry, (0.1,), spec, data)
    assert again == first and again_log == []  # same code: reused silently, as it should be

    # a change outside the evaluation's dependencies (the report writer) reuses it too
    edit(source, "experiments/paper/report.py", "OUTPUT_FILES =", "OUTPUT_FILES  =")
    quiet = Log()
    measure.honest(_context(tmp_path, CodeGuard(log=quiet)), entry, (0.1,), spec, data)
    assert quiet == []

    # the convergence check's tolerance changes: the summary and every suite record are recomputed, named
    edit(source, "attacks/checks.py", "tolerance: float = 0.01,", "tolerance: float = 0.02,")
    guard = CodeGuard(log=Log())
    summary_file = next((tmp_path / "out" / "evaluations").glob("*/summary.json"))
    before = summary_file.stat().st_mtime_ns
    measure.honest(_context(tmp_path, guard), entry, (0.1,), spec, data)
    assert summary_file.stat().st_mtime_ns != before
    assert guard.log[0].startswith("recomputing honest evaluation of mnist resnet (")
    assert "made by other code (attacks " in guard.log[0]
    records = [line for line in guard.recomputed if "/records/suite__" in line]  # and every suite record
    assert records and len(records) == len(guard.recomputed) - 1
    assert all("made by other code (attacks " in line for line in guard.recomputed)
    stored = json.loads(summary_file.read_text())
    assert stored["code"] == code_version.code_version(measure_code())

    # and an entry from the previous code is reused under --reuse-stale, named and listed for the report
    edit(source, "attacks/checks.py", "tolerance: float = 0.02,", "tolerance: float = 0.03,")
    lenient = CodeGuard(reuse_stale=True, log=Log())
    reused, _ = measure.honest(_context(tmp_path, lenient), entry, (0.1,), spec, data)
    assert reused == json.loads(json.dumps(stored["record"]["value"]))
    assert lenient.reused and "made by other code (attacks" in lenient.reused[0]
    assert lenient.log[0].startswith("reusing honest evaluation of mnist resnet")
    assert any("Stale results reused" in line for line in lenient.stamp_lines())


def measure_code() -> tuple[str, ...]:
    from experiments.paper.runtime import PAPER_EVALUATION_CODE

    return PAPER_EVALUATION_CODE


@pytest.mark.slow  # three tiny trainings, ~9 s
def test_a_cached_model_from_other_solver_code_is_retrained_and_named(source, tmp_path) -> None:
    spec = _tiny_spec()
    first = _context(tmp_path, CodeGuard(log=Log())).trained("mnist resnet", spec)
    weights = first.folder / "model.pt"
    trained_at = weights.stat().st_mtime_ns
    assert json.loads((first.folder / "code.json").read_text())["code"] == code_version.code_version(
        code_version.MODEL_CODE
    )

    same = CodeGuard(log=Log())
    _context(tmp_path, same).trained("mnist resnet", spec)
    assert weights.stat().st_mtime_ns == trained_at and same.log == []  # same code: the cache serves it

    edit(source, "stability/step_control.py", "STRETCH = 0.1", "STRETCH = 0.2")
    lenient = CodeGuard(reuse_stale=True, log=Log())
    _context(tmp_path, lenient).trained("mnist resnet", spec)
    assert weights.stat().st_mtime_ns == trained_at  # --reuse-stale: kept, but named
    assert lenient.reused and "made by other code (stability " in lenient.reused[0]

    guard = CodeGuard(log=Log())
    _context(tmp_path, guard).trained("mnist resnet", spec)
    assert weights.stat().st_mtime_ns != trained_at  # retrained from scratch, not silently reused
    assert guard.log[0].startswith("recomputing model mnist resnet (") and "stability " in guard.log[0]
    stamp = json.loads((first.folder / "code.json").read_text())["code"]
    assert stamp == code_version.code_version(code_version.MODEL_CODE)

    # an entry from before versioning (no code.json) is not silently reused either
    (first.folder / "code.json").unlink()
    legacy = CodeGuard(log=Log())
    _context(tmp_path, legacy).trained("mnist resnet", spec)
    assert "no code version recorded" in legacy.log[0]


def test_records_carry_the_code_version_and_a_content_checksum(source, tmp_path) -> None:
    config = {"eps": 0.1, "samples": 4}
    key = ("odenet", "PGD", 0.1)
    code = code_version.code_version(code_version.EVALUATION_CODE)
    RecordStore(tmp_path, code=code).put(key, config, {"robust_accuracy": 0.5, "attacked": [0, 1]})
    path = RecordStore(tmp_path).path(key)
    assert RecordStore(tmp_path, code=code).get(key, config) == {"robust_accuracy": 0.5, "attacked": [0, 1]}

    edit(source, "attacks/checks.py", "tolerance: float = 0.01,", "tolerance: float = 0.02,")
    newer = code_version.code_version(code_version.EVALUATION_CODE)
    store = RecordStore(tmp_path, code=newer, guard=CodeGuard(log=Log()))
    assert store.get(key, config) is None
    store.put(key, config, {"robust_accuracy": 0.25, "attacked": [0]})
    (line,) = store.summary()
    assert "made by other code (attacks " in line and line.endswith("odenet PGD 0.1")
    assert str(path) in store.guard.log[0]

    # an edited record (content changed, configuration hash intact) is recomputed and its file named
    stored = json.loads(path.read_text())
    stored["record"]["robust_accuracy"] = 1.0
    path.write_text(json.dumps(stored))
    edited = RecordStore(tmp_path, code=newer, guard=CodeGuard(log=Log()))
    assert edited.get(key, config) is None
    assert "content checksum mismatch" in edited.guard.log[0] and str(path) in edited.guard.log[0]


@pytest.mark.parametrize(
    "body, error",
    [
        ({"attack": "APGD", "kind": "white-box"}, "KeyError"),  # no eps
        ("attacked index 999", "ValueError"),  # an index outside the 4 images
        ("attacked index -1", "ValueError"),  # would wrap around silently
        ("another eps", "ValueError"),  # the body of another (attack, eps)
    ],
)
def test_a_malformed_suite_record_with_an_intact_hash_is_recomputed_and_named(tmp_path, body, error) -> None:
    from attacks.suite import AttackRecord
    from experiments.honest import SuiteStore
    from storage.records import content_sha256

    attacked, fooled = torch.tensor([True] * 4), torch.tensor([True, False] * 2)
    good = AttackRecord("APGD", 0.1, "white-box", {}, attacked, fooled, torch.zeros(4, dtype=torch.bool), 1.0,
                        {}).to_json()
    if body == "attacked index 999":
        body = {**good, "fooled": [0, 999]}
    elif body == "attacked index -1":
        body = {**good, "attacked": [-1]}
    elif body == "another eps":
        body = {**good, "eps": 0.2}
    log = Log()
    store = SuiteStore(RecordStore(tmp_path, guard=CodeGuard(log=log)), {"model": "m"}, ("suite",))
    store.save(AttackRecord.from_json(good, 4))
    path = store.store.path(("suite", "APGD", 0.1))
    stored = json.loads(path.read_text())
    stored["record"], stored["record_sha256"] = body, content_sha256(body)  # hash made to match
    path.write_text(json.dumps(stored))
    assert store.load(["APGD"], [0.1], 4) == {}  # recomputed, not a crash
    assert f"malformed record ({error}" in log[0] and str(path) in log[0]
    assert store.store.stale[("suite", "APGD", 0.1)][0].endswith(str(path))


def test_a_model_folder_from_other_code_loses_its_training_files_unless_reused(source, tmp_path) -> None:
    """The check both model caches (experiments.paper's and the main job's) make before loading or
    resuming: a checkpoint of other code is never resumed."""
    from storage.code_version import STAMP_NAME, model_folder_is_current

    code = code_version.code_version(code_version.MODEL_CODE)
    folder = tmp_path / "models" / "odenet-1234"
    assert model_folder_is_current(folder, code, CodeGuard(log=Log()), "model odenet")  # empty: stamped
    assert json.loads((folder / STAMP_NAME).read_text())["code"] == code
    for name in ("model.pt", "checkpoint.pt", "results.json"):
        (folder / name).write_bytes(b"weights")
    assert model_folder_is_current(folder, code, CodeGuard(log=Log()), "model odenet")  # same code: kept
    other = {**code, "stability": "0" * 16}
    lenient = CodeGuard(reuse_stale=True, log=Log())
    assert model_folder_is_current(folder, other, lenient, "model odenet")
    assert (folder / "checkpoint.pt").is_file() and lenient.reused
    guard = CodeGuard(log=Log())
    assert not model_folder_is_current(folder, other, guard, "model odenet")
    assert not any((folder / name).exists() for name in ("model.pt", "checkpoint.pt", "results.json"))
    assert json.loads((folder / STAMP_NAME).read_text())["code"] == other  # retrained under the new code
    assert guard.log == [f"recomputing model odenet: made by other code (stability {code['stability'][:8]} "
                         "-> 00000000)"]


def test_a_paper_cache_entry_is_a_record_of_the_one_store(tmp_path) -> None:
    from experiments.paper.runtime import cached_json
    from storage.records import FORMAT, content_sha256

    calls = []

    def compute():
        calls.append(1)
        return {"accuracy": 0.5}

    path = tmp_path / "parts" / "0123abcd.json"
    code = {"attacks": "1" * 16}
    value, seconds = cached_json(path, "part a", {"eps": 0.1}, compute, code=code)
    again, seconds_again = cached_json(path, "part a", {"eps": 0.1}, compute, code=code)
    assert calls == [1] and again == value and seconds_again == seconds  # the computing run's time
    stored = json.loads(path.read_text())
    assert stored["format"] == FORMAT and stored["code"] == code
    cached_json(path, "part a", {"eps": 0.2}, compute, code=code)  # another identity: recomputed
    assert len(calls) == 2

    stored = json.loads(path.read_text())
    stored["record"]["value"]["accuracy"] = 0.9  # edited by hand, checksum left as it was
    path.write_text(json.dumps(stored))
    guard = CodeGuard(log=Log())
    assert cached_json(path, "part a", {"eps": 0.2}, compute, code=code, guard=guard)[0] == {"accuracy": 0.5}
    assert guard.log[0].startswith("recomputing part a: content checksum mismatch")
    assert str(path) in guard.log[0]

    stored = json.loads(path.read_text())
    del stored["record"]["seconds"]  # malformed, checksum made to match
    stored["record_sha256"] = content_sha256(stored["record"])
    path.write_text(json.dumps(stored))
    guard = CodeGuard(log=Log())
    cached_json(path, "part a", {"eps": 0.2}, compute, code=code, guard=guard)
    assert len(calls) == 4 and guard.log[0].startswith("recomputing part a: malformed record (KeyError")
