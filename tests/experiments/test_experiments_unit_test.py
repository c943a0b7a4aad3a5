"""``python -m experiments.evaluate --unit-test``: the binarization test of the suite, one line per eps and
``unit_test.json``."""

from __future__ import annotations

import json

import pytest

from experiments import evaluate
from experiments.cli import run
from tests.experiments.test_experiments_evaluate import argv, setup  # noqa: F401  (the fixture)


@pytest.mark.slow
def test_unit_test_reports_the_pass_rate_per_eps(setup, capsys) -> None:  # noqa: F811
    tmp_path, _, resnet = setup
    assert run(evaluate.main, argv(tmp_path, resnet, "--unit-test", "--samples", "2")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("binarization test")]
    assert [line.split(":")[0] for line in lines] == [f"binarization test at eps {e}" for e in ("0.1", "0.5")]
    result = json.loads((tmp_path / "out" / "unit_test.json").read_text())["binarization_test"]
    for eps in ("0.1", "0.5"):
        assert result[eps]["samples"] == 2 and 0 <= result[eps]["passed"] <= result[eps]["applicable"] <= 2
    assert result["0.5"]["applicable"] == 2 and result["0.5"]["pass_rate"] == 1.0
