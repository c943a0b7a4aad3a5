"""``python -m tests.run``: the split of the test files over processes, and the exit status of the run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests import run

ROOT = Path(__file__).resolve().parents[1]


def test_the_split_keeps_every_file_once_and_balances_the_expected_time() -> None:
    weights = {Path(f"f{i}.py"): w for i, w in enumerate([100, 90, 40, 30, 30, 20, 5, 5, 1, 1])}
    groups = run.split(list(weights), 2, weights.__getitem__)
    assert sorted(f for g in groups for f in g) == sorted(weights)
    assert sorted(sum(weights[f] for f in g) for g in groups) == [161, 161]
    assert run.split(list(weights), 1, weights.__getitem__) == [sorted(weights)]
    assert len(run.split(list(weights)[:1], 4, weights.__getitem__)) == 1  # no empty groups


def test_every_test_file_has_an_expected_time_and_the_measured_ones_exist() -> None:
    for name in run.SECONDS:
        assert (run.TESTS / name).is_file(), name
    assert all(run.expected_seconds(f) > 0 for f in run.TESTS.rglob("test_*.py"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_the_run_passes_options_through_and_fails_when_one_group_fails(tmp_path) -> None:
    for name, body in (("test_a.py", "assert True"), ("test_b.py", "assert 1 + 1 == 3")):
        (tmp_path / name).write_text(textwrap.dedent(f"""
            def test_{name[5]}():
                {body}
            """))
    both = _run("-j", "2", "-q", str(tmp_path))
    assert both.returncode == 1, both.stdout + both.stderr  # pytest's status for a failed test
    assert "1 passed" in both.stdout and "1 failed" in both.stdout and "2 pytest processes" in both.stdout
    selected = _run("-j", "2", "-q", "-k", "test_a", str(tmp_path))  # the other group selects nothing
    assert selected.returncode == 0, selected.stdout + selected.stderr
    one_test = _run("-j", "2", "-q", f"{tmp_path / 'test_b.py'}::test_b", str(tmp_path / "test_a.py"))
    assert one_test.returncode == 1 and "1 passed" in one_test.stdout and "1 failed" in one_test.stdout
    node = f"{tmp_path / 'test_a.py'}::test_a"
    assert run.test_files([node]) == [Path(node)]
    nothing = _run("-j", "2", "-q", "-k", "no_such_test", str(tmp_path))
    assert nothing.returncode == run.NO_TESTS, nothing.stdout
    assert _run("-j", "0").returncode == 2  # a usage error
