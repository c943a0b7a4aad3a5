"""``experiments.adversarial_training``: a finished method is a record of the one record store, reused only
with the same settings and code."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import adversarial_training
from tests.nets.test_data import write_mnist


@pytest.mark.slow  # three tiny runs, ~4 s
def test_a_finished_method_is_reused_only_with_its_settings(tmp_path, capsys):
    write_mnist(tmp_path / "data", n_train=16, n_test=4)
    argv = ["--data-dir", str(tmp_path / "data"), "--no-verify", "--out", str(tmp_path / "out"),
            "--methods", "natural", "--epochs", "1", "--limit-train", "16", "--batch-size", "8",
            "--eval-samples", "4", "--no-progress", "--threads", "1"]
    first = adversarial_training.main(argv)
    weights = tmp_path / "out" / "natural" / "model.pt"
    record = tmp_path / "out" / "records" / "natural.json"
    stamps = weights.stat().st_mtime_ns, record.stat().st_mtime_ns
    assert json.loads((tmp_path / "out" / "natural" / "code.json").read_text())["code"]

    again = adversarial_training.main(argv)  # same settings and code: the record serves, nothing recomputed
    assert again.rows == first.rows and (weights.stat().st_mtime_ns, record.stat().st_mtime_ns) == stamps

    trained = torch.load(weights, weights_only=True)["model"]
    adversarial_training.main([*argv, "--eps", "0.2"])  # another ε: the report is recomputed
    stored = json.loads(record.read_text())
    assert stored["config"]["eps"] == 0.2 and stored["record"]["eps"] == 0.2
    resumed = torch.load(weights, weights_only=True)["model"]  # the finished training resumed, not redone
    assert all(torch.equal(resumed[name], tensor) for name, tensor in trained.items())
    capsys.readouterr()
