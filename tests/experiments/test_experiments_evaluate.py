"""``python -m experiments.evaluate`` on tiny MNIST-format files and untrained tiny models: files, columns,
solver-aware attacks, resume, one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from experiments import evaluate
from experiments.cli import run
from nets.datasets import mnist as mnist_module
from nets.registry import build_model
from nets.training import atomic_torch_save
from tests.nets.test_data import write_mnist


def save_run(folder, name: str, **kwargs) -> str:
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    folder.mkdir(parents=True)
    atomic_torch_save({"model": model.state_dict(), "model_spec": {"name": name, "kwargs": kwargs},
                       "dataset": "mnist"}, folder / "model.pt")
    return str(folder)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    files = write_mnist(tmp_path / "data", n_train=8, n_test=6)
    for name, digest in files["md5"].items():
        monkeypatch.setitem(mnist_module.MNIST_MD5, name, digest)
    ode = save_run(tmp_path / "ode", "odenet_mnist_small", channels=2)
    resnet = save_run(tmp_path / "res", "mnist_resnet_small", width=2)
    return tmp_path, ode, resnet


def argv(tmp_path, checkpoint, *extra):
    return ["--checkpoint", checkpoint, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--eps", "0.1", "0.5", "--samples", "4",
            "--steps", "2", "--target-classes", "1", "--queries", "3",
            "--convergence-steps", "1", "2", "--convergence-samples", "2", "--fixed-steps", "2",
            "--reference-tol", "1e-3", "--batch-size", "3", "--no-progress", "--device", "cpu", *extra]


@pytest.mark.slow
def test_ode_preset_writes_every_file_with_its_columns_and_resumes(setup, capsys) -> None:
    tmp_path, ode, resnet = setup
    assert run(evaluate.main, argv(tmp_path, ode, "--preset", "ode-quick", "--against", resnet)) == 0
    out = tmp_path / "out"
    for name in ("report.md", "results.json", "results.csv", "per_sample.csv", "robustness.png"):
        assert (out / name).is_file() and (out / name).stat().st_mode & 0o777 == 0o644
    rows = list(csv.DictReader((out / "results.csv").open()))
    attacks = {row["attack"] for row in rows}
    assert {"APGD-CE-2", "APGD-T-2x1", "Square-3", "worst-case", "PGD-40 (paper protocol)",
            "APGD-CE via rk4 2 steps", "APGD-CE via dopri5 tol 0.001", "APGD-CE via adjoint gradients",
            "APGD-CE transfer from res"} <= attacks
    for row in rows:
        assert 0.0 <= float(row["robust_accuracy"]) <= 1.0
    worst = {float(r["eps"]): float(r["robust_accuracy"]) for r in rows if r["attack"] == "worst-case"}
    assert worst[0.5] <= worst[0.1]
    report = (out / "report.md").read_text()
    assert "worst case" in report and "eps-sanity" in report and "batch-dependence" in report
    results = json.loads((out / "results.json").read_text())
    assert results["models"]["ode"]["solver"]["evaluated_with_per_sample_control"] is True
    assert len(results["models"]["ode"]["flags"]) == 17  # the suite's 9 checks + the 8 indicators of failure
    per_sample = list(csv.DictReader((out / "per_sample.csv").open()))
    assert len(per_sample) == 4 and "fooled_by@0.1" in per_sample[0]
    first = capsys.readouterr().out
    assert "worst-case robust accuracy" in first
    closing = first.strip().splitlines()[-1]
    assert closing.startswith("wrote ") and all(name in closing for name in ("report.md", "robustness.png"))
    # rerun: every record is reused, the numbers are identical
    records = sorted((out / "records").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert evaluate.main(argv(tmp_path, ode, "--preset", "ode-quick", "--against", resnet)) == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert list(csv.DictReader((out / "results.csv").open())) == rows
    # another configuration is recomputed, never reused
    reseeded = argv(tmp_path, ode, "--preset", "ode-quick", "--against", resnet, "--seed", "1")
    assert evaluate.main(reseeded) == 0
    assert len(list((out / "records").glob("*.json"))) == len(records)
    assert [p.stat().st_mtime_ns for p in records] != stamps


def test_errors_are_one_line_with_exit_code_2(setup, capsys) -> None:
    tmp_path, ode, _ = setup
    assert run(evaluate.main, argv(tmp_path, str(tmp_path / "missing"))) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "no trained model" in error
    bad = argv(tmp_path, ode)
    bad[bad.index("--data-dir") + 1] = str(tmp_path / "nowhere")
    assert run(evaluate.main, bad) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--data-dir" in error


def test_a_two_class_model_is_evaluated_with_the_attacks_that_apply_and_the_report_names_the_rest(tmp_path):
    # APGD-T's targeted DLR loss needs >= 4 classes: the suite runs the others and every output says so.
    from experiments import honest

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    x = torch.rand(12, 1, 8, 8)
    y = model(x).argmax(dim=1)
    config = honest.EvaluationConfig(eps=(0.05, 0.3), samples=12, steps=5, target_classes=3, queries=20,
                                     convergence_steps=(5, 10), convergence_samples=4, dependence_samples=4)
    evaluation = honest.evaluate(model, x, y, config, progress=False)
    honest.write_outputs({"binary": evaluation}, tmp_path, command="test")
    report = (tmp_path / "report.md").read_text()
    assert "- skipped `APGD-T-5x3`: needs >= 4 classes, the model returns 2" in report
    payload = json.loads((tmp_path / "results.json").read_text())["models"]["binary"]
    assert payload["skipped_attacks"] == {"APGD-T-5x3": "needs >= 4 classes, the model returns 2"}
    assert "APGD-T-5x3" not in payload["attacks"]


@pytest.mark.parametrize("eps", [["-0.1"], ["nan"], ["inf"], ["0.1", "0.1"], ["8/255", "0.1", "8/255"]])
def test_a_negative_nan_or_repeated_eps_is_a_usage_error(eps, tmp_path, capsys) -> None:
    from experiments import robustness

    for main in (evaluate.main, robustness.main):
        args = ["--checkpoint", "never-read"] if main is evaluate.main else ["--data-dir", "never-read"]
        try:
            status = run(main, [*args, "--out", str(tmp_path), "--eps", *eps])
        except SystemExit as exit:  # argparse's own error (the usage line, then one error line)
            status = exit.code
        assert status == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--eps" in error and (eps[0] if len(eps) == 1 else "twice") in error
    assert not any(tmp_path.iterdir())  # refused before anything was read or written
