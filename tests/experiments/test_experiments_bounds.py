"""``python -m experiments.bounds``: figures + CSV + summary for a random network and a trained checkpoint."""

import csv
import json
import runpy

import pytest
import torch

import nets
from experiments.bounds import main


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_random_network_writes_figures_csv_and_summary(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--scheme", "euler,backward_euler", "--h", "1,0.1", "--steps", "3"]
    args += ["--samples", "2", "--channels", "2", "--size", "4", "--lipschitz", "2.0"]
    assert main(args) == 0
    output = capsys.readouterr().out
    assert "skipping backward_euler at h=1" in output  # hK = 2: no bound, said so
    assert (tmp_path / "euler.png").stat().st_size > 10_000
    assert (tmp_path / "backward_euler.png").is_file()
    rows = read_rows(tmp_path / "results.csv")
    assert {row["run"] for row in rows} == {"euler_h1", "euler_h0.1", "backward_euler_h0.1"}
    assert len(rows) == 3 * 4 and all(row["violations"] == "0" for row in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lipschitz_lower"] <= summary["lipschitz_upper"] == pytest.approx(2.0, rel=1e-9)
    assert summary["command"].startswith("python -m experiments.bounds --out")
    assert summary["runs"]["euler_h1"]["violations"] == 0


def test_trained_checkpoint_is_verified_at_every_step_size(tmp_path):
    kwargs = {"width": 4, "blocks_per_stage": 2}
    model = nets.build_model("mnist_resnet_small", **kwargs)
    torch.save(
        {"model": model.state_dict(), "model_spec": {"name": "mnist_resnet_small", "kwargs": kwargs}},
        tmp_path / "model.pt",
    )
    out = tmp_path / "report"
    args = ["--checkpoint", str(tmp_path / "model.pt"), "--out", str(out), "--h", "1,0.01", "--samples", "2"]
    assert main(args) == 0
    assert (out / "model.png").is_file()
    rows = read_rows(out / "results.csv")
    assert {row["run"] for row in rows} == {"model_h1", "model_h0.01"}
    summary = json.loads((out / "summary.json").read_text())
    kinds = [block["block"] for block in summary["blocks"]["h=1"]]
    assert any("euler step" in kind for kind in kinds)


def test_group_norm_model_is_refused_with_exit_status_2(tmp_path, capsys):
    assert main(["--model", "odenet_mnist_small", "--out", str(tmp_path), "--samples", "1"]) == 2
    assert "GroupNorm" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["--h", "0,1"], ["--scheme", "midpoint"], ["--model", "resnet8", "--checkpoint", "x"], ["--steps", "0"]],
)
def test_bad_arguments_exit(tmp_path, args):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), *args])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(["--checkpoint", str(tmp_path / "absent.pt"), "--out", str(tmp_path)])


def test_report_md_has_the_table_verdicts_configuration_and_command(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--scheme", "euler", "--h", "0.1", "--steps", "2", "--samples", "1",
            "--channels", "2", "--size", "4", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    assert "euler_h0.1" in report and "no violation in the 1 run(s) covered by the theorems" in report
    assert "no violation in the 1 run(s) covered by the theorems" in printed
    assert "## Configuration" in report and "- steps: 2" in report
    assert "python -m experiments.bounds --out" in report


def test_uncovered_runs_are_explained():
    from experiments.bounds import verdict_lines

    class Run:
        def __init__(self, covered, violated):
            self.covered, self.violated = covered, violated

    lines = verdict_lines([("a", Run(True, False)), ("b", Run(False, True)), ("c", Run(False, False))])
    assert lines[0] == "no violation in the 1 run(s) covered by the theorems"
    assert "2 run(s) marked (not covered)" in lines[1] and "1 of them exceed" in lines[1]
    assert "not a failed proof" in lines[1]


def test_the_former_command_name_says_where_it_moved(capsys):
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("proofs_check", run_name="__main__")
    assert exit_info.value.code == 2
    assert "python -m experiments.bounds" in capsys.readouterr().err


def test_every_explicit_method_of_stability_is_a_scheme(tmp_path):
    args = ["--out", str(tmp_path), "--scheme", "bosh3,tsit5", "--h", "0.1", "--steps", "3"]
    args += ["--samples", "2", "--channels", "2", "--size", "4", "--lipschitz", "2.0"]
    assert main(args) == 0
    rows = read_rows(tmp_path / "results.csv")
    assert {row["run"] for row in rows} == {"bosh3_h0.1", "tsit5_h0.1"}
    assert all(row["violations"] == "0" for row in rows)
