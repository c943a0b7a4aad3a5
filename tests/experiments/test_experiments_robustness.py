"""The main job end to end on tiny MNIST-format files, and its masking diagnostics."""

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attacks import PGD
from experiments import cli, robustness
from experiments.masking import SurrogateSolverAttack, gradient_agreement, solver_override
from nets.datasets import mnist as mnist_module
from nets.registry import build_model
from tests.nets.test_data import write_mnist


def test_main_job_trains_attacks_writes_and_resumes(tmp_path, monkeypatch, capsys):
    files = write_mnist(tmp_path / "data", n_train=64, n_test=16)
    for name, digest in files["md5"].items():
        monkeypatch.setitem(mnist_module.MNIST_MD5, name, digest)
    argv = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--runs", str(tmp_path / "runs"),
            "--train-epochs", "1", "--train-limit", "32", "--samples", "4", "--eps", "0.3",
            "--suite-steps", "2", "--suite-targets", "1", "--suite-queries", "3",
            "--convergence-steps", "1", "2", "--convergence-samples", "2",
            "--difgsm-steps", "2", "--boundary-samples", "2", "--boundary-queries", "12",
            "--diagnostic-samples", "2",
            "--reference-tol", "1e-3", "--fixed-steps", "2",
            "--resnet-arg", "width=2", "--odenet-arg", "channels=2",
            "--batch-size", "8", "--device", "cpu"]
    records = robustness.main(argv)
    progress = capsys.readouterr().err
    # the bars name what is running and every later phase says what it does (these untrained models
    # classify no test image right, so the cascade has no work; the protocol attacks run on every image)
    for shown in ("[resnet] paper attacks: FGSM @ ε=0.3", "[resnet] paper attacks: DI2-FGSM @ ε=0.3",
                  "[resnet] paper attacks: Boundary @ ε=0.3",
                  "[odenet] gradient agreement: input gradients",
                  "[odenet] suite: PGD-40 (paper protocol) @ ε=0.3",
                  "[odenet] suite: checks (PGD-1/2 on 2 images, ε-sanity, batch dependence and randomness "
                  "on 4)"):
        assert shown in progress, shown
    argv.append("--no-progress")
    assert set(records) == {"resnet", "odenet"}
    attacks = {row["attack"] for row in records["odenet"]["rows"]}
    expected = {"FGSM", "DI2-FGSM", "Boundary", "APGD-CE-2", "APGD-T-2x1", "Square-3", "worst-case",
                "PGD-40 (paper protocol)", "APGD-CE via dopri5 tol 0.001", "APGD-CE via rk4 2 steps",
                "APGD-CE via adjoint gradients", "APGD-CE transfer from resnet"}
    assert expected <= attacks
    for record in records.values():
        for row in record["rows"]:
            assert 0.0 <= row["robust_accuracy"] <= row["clean_accuracy"] + 1e-12
    assert "gradient_agreement" in records["odenet"] and "gradient_agreement" not in records["resnet"]
    saved = json.loads((tmp_path / "out" / "odenet.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(records["odenet"]["rows"]))
    assert (tmp_path / "out" / "results.csv").read_text().startswith("model,attack")
    # A second run reuses the finished records instead of recomputing them.
    (tmp_path / "out" / "resnet.json").write_text(json.dumps({**records["resnet"], "marker": 1}))
    again = robustness.main(argv)
    assert again["resnet"]["marker"] == 1
    # the report of a run that reused everything keeps the time of the run that computed the results
    report = (tmp_path / "out" / "report.md").read_text()
    spent = {label: robustness.compute_seconds(record) for label, record in records.items()}
    assert all(seconds > 0 for seconds in spent.values())
    assert (f"each record timed in the run that computed it (training not included): resnet "
            f"{spent['resnet']:.0f} s, odenet {spent['odenet']:.0f} s.") in report
    assert "it computed 0 records and reused 0, and reused the complete results of resnet, odenet." in report
    assert "Wall time of this run" not in report


def test_solver_override_is_temporary_and_changes_the_solve():
    model = build_model("odenet_mnist_small", channels=4).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    block = model.ode_block
    before = (block.method, block.rtol, block.atol, block.step_size)
    with solver_override(model, method="euler", step_size=block.t1):
        coarse = model(x)
    assert (block.method, block.rtol, block.atol, block.step_size) == before
    assert not torch.allclose(coarse, model(x))


def test_gradient_agreement_is_perfect_for_the_reference_itself_and_lower_for_a_crude_solver():
    torch.manual_seed(0)
    model = build_model("odenet_mnist_small", channels=4)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    tight = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6, "step_size": None}
    with solver_override(model, **tight):
        crude = {"one_euler_step": {"method": "euler", "step_size": 1.0}}
        report = gradient_agreement(model, x, y, tight, crude)
    assert report["deployed"]["median_cosine"] > 1 - 1e-6
    assert report["one_euler_step"]["median_relative_error"] > report["deployed"]["median_relative_error"]


def test_surrogate_attack_crafts_under_the_surrogate_solver():
    model = build_model("odenet_mnist_small", channels=4).eval()
    seen = []
    original_forward = model.ode_block.forward

    def spy(y):
        seen.append(model.ode_block.method)
        return original_forward(y)

    model.ode_block.forward = spy
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    attack = SurrogateSolverAttack(PGD(0.1, steps=1), method="rk4", step_size=0.25)
    x_adv = attack(model, x, torch.tensor([1, 2]))
    assert set(seen) == {"rk4"} and model.ode_block.method == "dopri5"
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


# --- the command line: report, closing line, model cache, resume, Ctrl-C, errors ----------------------------

REPO = Path(__file__).resolve().parents[2]


def smoke_argv(tmp_path: Path, *extra: str, odenet_arg: str = "channels=2") -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--no-verify", "--out", str(tmp_path / "out"),
            "--train-epochs", "1", "--train-limit", "32", "--samples", "4", "--eps", "0.1", "0.3",
            "--suite-steps", "2", "--suite-targets", "1", "--suite-queries", "3",
            "--convergence-steps", "1", "2", "--convergence-samples", "2",
            "--difgsm-steps", "2", "--boundary-samples", "2", "--boundary-queries", "12",
            "--diagnostic-samples", "2", "--reference-tol", "1e-3", "--fixed-steps", "2",
            "--resnet-arg", "width=2", "--odenet-arg", odenet_arg, "--batch-size", "8", "--no-progress",
            "--device", "cpu", "--threads", "1", *extra]


def closing_paths(stdout: str) -> list[Path]:
    line = stdout.strip().splitlines()[-1]
    assert line.startswith("wrote ")
    return [Path(p) for p in line[len("wrote "):].split(", ")]


@pytest.mark.slow
def test_smoke_main_job_report_files_model_cache_and_recomputation(tmp_path, capsys, monkeypatch):
    write_mnist(tmp_path / "data", n_train=64, n_test=16)
    old_umask = os.umask(0o022)
    try:
        for folder in ("first", "second"):
            (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / "first")
        argv = smoke_argv(tmp_path)
        assert cli.run(robustness.main, argv) == 0
        stdout = capsys.readouterr().out
        written = closing_paths(stdout)
        out = tmp_path / "out"
        expected = {out / "report.md", out / "results.csv", out / "results.json", out / "odenet.json"}
        assert expected <= set(written)
        assert any(p.parent.parent == out / "models" and p.name == "model.pt" for p in written)
        for path in written:
            assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert not list((tmp_path / "first").iterdir())  # nothing lands in the working directory
        report = (out / "report.md").read_text()
        table = stdout[stdout.index("robust accuracy"):stdout.index("wrote ")].strip()
        assert table in report and "## Configuration" in report and "suite_steps: 2" in report
        assert "python -m experiments.robustness --data-dir" in report and "lr=0.1" in report
        assert "[odenet] no gradient-masking symptom found" in report or "[odenet] WARNING" in report
        for row in csv.DictReader((out / "results.csv").open()):
            for value in row.values():
                assert len(value.partition(".")[2]) <= 4 or "e" in value or not value[:1].isdigit(), value

        # Another working directory: the cached models and complete records are reused, nothing trained.
        monkeypatch.chdir(tmp_path / "second")
        assert cli.run(robustness.main, argv) == 0
        stdout = capsys.readouterr().out
        assert "training" not in stdout and stdout.count("reusing the complete") == 2

        # Another DI²-FGSM setting: its records are recomputed and said so; FGSM / Boundary / suite resumed.
        assert cli.run(robustness.main, [*argv, "--difgsm-steps", "3"]) == 0
        stdout = capsys.readouterr().out
        recomputed = next(line for line in stdout.splitlines() if line.startswith("[resnet] recomputed"))
        assert "settings.steps: 2 -> 3" in recomputed and "resnet DI2-FGSM 0.1" in recomputed
        assert "resnet FGSM" not in recomputed.partition("):")[2]
        resumed = [line for line in stdout.splitlines() if line.split("] ")[-1].startswith("resumed")]
        assert "resnet FGSM 0.1" in resumed[0] and "odenet Boundary" in resumed[1]
        stored = json.loads((out / "records" / "resnet__DI2-FGSM__0.1.json").read_text())
        assert stored["config"]["settings"]["steps"] == 3
        assert len(stored["record"]["attacked"]) == 4

        # Another recipe: another model in the cache, trained with it.
        assert cli.run(robustness.main, [*argv, "--resnet-train", "lr=0.05"]) == 0
        assert "training mnist_resnet_small on mnist (1 epochs, sgd lr 0.05" in capsys.readouterr().out
        assert len(list((out / "models").glob("mnist_resnet_small-*"))) == 2
    finally:
        os.umask(old_umask)


def test_missing_data_dir_is_one_line_and_exit_status_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("NR_DATA_DIR", None)
    command = [sys.executable, "-m", "experiments.robustness", "--data-dir", str(tmp_path / "absent"),
               "--out", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: data directory") and "absent" in line and "--download" in line


def _interrupt_after_first_record(argv: list[str], env: dict[str, str], cwd: Path,
                                  records: Path) -> tuple[int, str]:
    """Start the main job, send SIGINT once its first record is on disk; its exit status and stderr.

    The job gets SIGINT's default disposition: a test run in the background (``cmd &`` in a shell without job
    control) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    process = subprocess.Popen([sys.executable, "-m", "experiments.robustness", *argv], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(records.glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if process.poll() is not None:
            _, stderr = process.communicate()
            raise AssertionError(f"the job ended (exit {process.returncode}) before it could be interrupted: "
                                 f"{stderr[-2000:]}")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


@pytest.mark.slow
def test_ctrl_c_keeps_complete_records_exits_130_with_one_line_and_resumes(tmp_path, capsys):
    write_mnist(tmp_path / "data", n_train=64, n_test=32)
    # Both labels get the small ResNet (one cached model) so that the rerun below finishes quickly.
    argv = smoke_argv(tmp_path, "--samples", "16", "--difgsm-steps", "10",
                      "--odenet-model", "mnist_resnet_small", "--eps", "0.01", "0.04", odenet_arg="width=2")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    records = tmp_path / "out" / "records"
    returncode, stderr = _interrupt_after_first_record(argv, env, tmp_path, records)
    assert returncode == 130, stderr[-2000:]
    (line,) = stderr.strip().splitlines()
    assert line.startswith("interrupted") and "rerun the same command to resume" in line
    complete = sorted(records.glob("*.json"))
    assert complete and not [p for p in records.iterdir() if p.suffix != ".json"]
    for path in complete:
        record = json.loads(path.read_text())["record"]
        assert "robust" in record or "rows" in record or "deployed" in record or "fooled" in record
    assert cli.run(robustness.main, argv) == 0
    stdout = capsys.readouterr().out
    for label in ("resnet", "odenet"):
        count = len([p for p in complete if p.name.startswith(f"{label}__")])
        assert not count or f"[{label}] resumed {count} complete record(s)" in stdout


@pytest.mark.slow
def test_main_job_trains_exactly_like_the_readme_training_command(tmp_path, capsys):
    """The cached ResNet equals `python -m experiments.train` with the README's flags (same seed, data)."""
    from experiments import train as train_command

    write_mnist(tmp_path / "data", n_train=64, n_test=16)
    assert cli.run(robustness.main, smoke_argv(tmp_path)) == 0
    (cached,) = (tmp_path / "out" / "models").glob("mnist_resnet_small-*")
    train_command.main(["--model", "mnist_resnet_small", "--dataset", "mnist", "--data-dir",
                        str(tmp_path / "data"), "--no-verify", "--epochs", "1", "--batch-size", "128",
                        "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--nesterov",
                        "--weight-decay", "5e-4", "--schedule", "onecycle", "--seed", "0",
                        "--limit-train", "32", "--model-arg", "width=2", "--device", "cpu", "--no-progress",
                        "--out", str(tmp_path / "readme_run")])
    capsys.readouterr()
    ours = torch.load(cached / "model.pt", weights_only=True)
    readme = torch.load(tmp_path / "readme_run" / "model.pt", weights_only=True)
    assert ours["config"] == readme["config"] and ours["model_spec"] == readme["model_spec"]
    for name, tensor in readme["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
