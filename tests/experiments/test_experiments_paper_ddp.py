"""``python -m experiments.paper`` under ``torchrun`` (2 gloo processes) equals 1 process: the same weights
with the same global batch (as tests/nets/test_ddp.py), the same per-sample attack results and a byte-equal
results.csv; a failure on one rank ends every rank with one line; ``--plan --processes K`` scales."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.paper import cli
from experiments.paper.distributed import per_process_batch
from experiments.paper.estimate import Calibration, plan_lines
from tests.experiments.paper_ddp_setup import install
from tests.nets.test_data import cifar_batch_bytes, idx_bytes, make_cifar, write_cifar_dir, write_mnist

REPO = Path(__file__).resolve().parents[2]
# the caller's data directory and any torchrun variables: a run here sets up its own
FOREIGN_ENV = ("NR_DATA_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# Each process the launcher starts installs the tiny Table 1 of ``paper_ddp_setup``; a rank named by FAIL_RANK
# fails in training.
LAUNCHER = textwrap.dedent(
    """
    import os
    import sys

    from experiments.paper.cli import main
    from tests.experiments.paper_ddp_setup import install

    install()
    if os.environ.get("FAIL_RANK") == os.environ.get("RANK", "0"):
        from experiments.paper.runtime import Context

        def fail(self, *args, **kwargs):
            raise RuntimeError("injected failure")

        Context.train = fail
    sys.exit(main())
    """
)


def _banded(rng: np.random.Generator, n: int, channels: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with a bright band of rows at a height set by the label (learnable in a few steps)."""
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 60, (n, channels, size, size), dtype=np.uint8)
    band = size // 10
    for i, label in enumerate(labels):
        images[i, :, band * label : band * (label + 1), :] = 255
    return images, labels


def write_banded_data(root: Path) -> None:
    """MNIST: 128 training images (4 global batches of 32), 16 test; CIFAR-10: 5 × 32 training, 16 test."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 128), ("t10k", 16)):
        images, labels = _banded(rng, n, 1, 28)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images[:, 0]), mtime=0))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels), mtime=0))
    batches = root / "cifar-10-batches-py"
    batches.mkdir(exist_ok=True)
    for name, n in [(f"data_batch_{i}", 32) for i in range(1, 6)] + [("test_batch", 16)]:
        images, labels = _banded(rng, n, 3, 32)
        (batches / name).write_bytes(cifar_batch_bytes(images.reshape(n, -1), [int(v) for v in labels]))


def _argv(tmp_path: Path, out: str, *extra: str) -> list[str]:
    return ["table1", "--data-dir", str(tmp_path / "data"), "--scale", "smoke", "--out", str(tmp_path / out),
            "--no-progress", "--threads", "1", "--device", "cpu", *extra]


def _run_here(tmp_path: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    """One process, this one: the launcher's command with ``install()`` undone afterwards (no interpreter
    start-up, which is most of a tiny run's time)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(stdout), redirect_stderr(stderr):
        install(patch.setattr)
        for name in FOREIGN_ENV:
            patch.delenv(name, raising=False)
        argv = _argv(tmp_path, out, *extra)
        code = cli.main(argv)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def _launch(tmp_path: Path, out: str, processes: int, *extra: str, **env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]),
               **env)
    for name in FOREIGN_ENV:
        env.pop(name, None)
    runner = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    argv = _argv(tmp_path, out, *extra)
    return subprocess.run([*runner, str(tmp_path / "launcher.py"), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)


def _records(out: Path) -> dict[str, dict]:
    """Every suite record's per-sample masks, by evaluation folder and record file."""
    found = {}
    for path in sorted(out.glob("evaluations/*/records/*.json")):
        record = json.loads(path.read_text())["record"]
        found[f"{path.parent.parent.name}/{path.name}"] = {k: record[k]
                                                          for k in ("attacked", "fooled", "nonfinite")}
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_ddp")
    write_banded_data(root / "data")
    (root / "launcher.py").write_text(LAUNCHER)
    one, two = _run_here(root, "one"), _launch(root, "two", 2)
    return root, one, two


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one_with_the_same_global_batch(runs) -> None:
    root, one, two = runs
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count("table1: ") == 1  # rank 0 alone reports
    folders = sorted(p.name for p in (root / "one" / "models").iterdir())
    assert len(folders) == 2 and folders == sorted(p.name for p in (root / "two" / "models").iterdir())
    for name in folders:
        a, b = (torch.load(root / run / "models" / name / "model.pt", weights_only=True)["model"]
                for run in ("one", "two"))
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
        spec = json.loads((root / "one" / "models" / name / "spec.json").read_text())
        moved = json.loads((root / "one" / "models" / name / "results.json").read_text())["history"]
        assert moved[-1]["train_loss"] < moved[0]["train_loss"]  # it trained: the equality is not of inits
        record = json.loads((root / "two" / "models" / name / "results.json").read_text())
        assert record["world_size"] == 2 and record["global_batch_size"] == spec["train"]["batch_size"] == 32
        assert record["config"]["batch_size"] == 16


@pytest.mark.slow
def test_two_processes_give_the_same_per_sample_attack_results_and_report(runs) -> None:
    root, one, two = runs
    assert one.returncode == 0 and two.returncode == 0
    a, b = _records(root / "one"), _records(root / "two")
    assert len(a) >= 4 and a == b
    robust = []
    for path in sorted((root / "one" / "evaluations").glob("*/summary.json")):
        mine = json.loads(path.read_text())["record"]["value"]
        theirs = json.loads((root / "two" / path.relative_to(root / "one")).read_text())["record"]["value"]
        assert mine["worst_case_robust"] == theirs["worst_case_robust"]
        assert mine["flags"] == theirs["flags"] and mine["protocol"] == theirs["protocol"]  # verdicts too
        robust += mine["worst_case_robust"]
    assert any("1" in r for r in robust) and any("0" in r for r in robust)  # the comparison can fail
    assert any(any(record["fooled"]) for record in a.values())
    one_csv = (root / "one" / "table1" / "results.csv").read_bytes()
    assert one_csv == (root / "two" / "table1" / "results.csv").read_bytes()
    for run, processes in (("one", 1), ("two", 2)):
        record = json.loads((root / run / "table1" / "results.json").read_text())["run"]
        assert record["processes"] == processes
    assert ", 2 processes), finished" in (root / "two" / "table1" / "report.md").read_text()
    for run, launcher in (("one", "python -m"), ("two", "torchrun --nproc_per_node 2 -m")):
        # the report prints the command that made it, launcher included
        command = json.loads((root / run / "table1" / "results.json").read_text())["command"]
        assert command.startswith(f"{launcher} experiments.paper table1 "), command
        assert f"\n{command}\n" in (root / run / "table1" / "report.md").read_text()
    made = {p.relative_to(root / "one") for p in (root / "one").rglob("*") if p.is_file()}
    assert made == {p.relative_to(root / "two") for p in (root / "two").rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_failure_on_one_rank_ends_every_rank_with_one_line(runs) -> None:
    root, _, _ = runs
    failing = 1  # a helper: the leader, waiting in a collective, loses its peer and stays silent
    done = _launch(root, f"fail{failing}", 2, FAIL_RANK=str(failing))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert lines == [f"error: RuntimeError: (rank {failing} of 2) injected failure [rerun with --debug for "
                     "the traceback]"], done.stderr[-3000:]


@pytest.mark.slow
def test_shard_jobs_then_the_merge_equal_one_process(runs) -> None:
    root, one, _ = runs
    assert one.returncode == 0
    models = ("--models", str(root / "one" / "models"))  # the one-process run's trained models, reused
    trained = _run_here(root, "shards", "--train-only", *models)  # finds every model trained: nothing to do
    assert trained.returncode == 0 and "training" not in trained.stdout, trained.stderr[-3000:]
    assert not (root / "shards" / "table1").exists()
    first = _run_here(root, "shards", "--shard", "0/2", *models)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (root / "shards" / "table1").exists()  # a shard job writes no report
    missing = _run_here(root, "shards", *models)
    assert missing.returncode == 2 and "missing shard(s) 1/2 (samples 4-7)" in missing.stderr
    assert _run_here(root, "shards", "--shard", "1/2", *models).returncode == 0
    merged = _run_here(root, "shards", *models)
    assert merged.returncode == 0, merged.stderr[-3000:]
    for path in sorted((root / "one" / "evaluations").glob("*/summary.json")):
        mine = json.loads(path.read_text())["record"]["value"]
        theirs = json.loads((root / "shards" / path.relative_to(root / "one")).read_text())["record"]["value"]
        for key in ("worst_case_robust", "protocol", "flags", "clean"):
            assert mine[key] == theirs[key], key
    one_csv = (root / "one" / "table1" / "results.csv").read_bytes()
    assert one_csv == (root / "shards" / "table1" / "results.csv").read_bytes()


def test_a_shard_job_refuses_untrained_models_and_torchrun(tmp_path, monkeypatch, capsys) -> None:
    write_mnist(tmp_path / "data", n_train=8, n_test=6)
    write_cifar_dir(tmp_path / "data", make_cifar(n_per_batch=4))
    argv = ["table1", "--data-dir", str(tmp_path / "data"), "--scale", "smoke", "--out",
            str(tmp_path / "out"), "--no-progress", "--shard", "0/2"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: model mnist resnet is not trained yet (")
    assert "--train-only instead of --shard" in error and not (tmp_path / "out" / "table1").exists()
    for bad in ("2/2", "x"):
        assert cli.main([*argv[:-1], bad]) == 2
        assert "expected K/N with integers 0 <= K < N" in capsys.readouterr().err
    assert cli.main([*argv, "--train-only"]) == 2
    assert "two steps" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(argv) == 2
    assert "--shard jobs run one process each" in capsys.readouterr().err


def test_per_process_batch_keeps_the_global_batch_or_refuses() -> None:
    assert per_process_batch(128, 4) == 32
    assert per_process_batch(32, 1) == 32
    with pytest.raises(ValueError, match=r"32 images cannot be split evenly over 3 .*\[1, 2, 4, 8, 16, 32\]"):
        per_process_batch(32, 3)


def test_a_refused_command_under_torchrun_is_one_line_from_rank_0(tmp_path, monkeypatch, capsys) -> None:
    argv = ["table1", "--data-dir", str(tmp_path), "--scale", "smoke", "--out", str(tmp_path / "out"),
            "--device", "cuda:1"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_:  # every rank refuses it: the others exit 2 without a word
        cli.main(argv)
    assert exit_.value.code == 2 and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --device cuda:1 under torchrun: pass --device cuda (each process takes cuda:LOCAL_RANK) or "
        "cpu"
    )
    monkeypatch.setenv("WORLD_SIZE", "3")  # table1's smoke recipes use batch 32
    assert cli.main(argv[:-2]) == 2
    assert "cannot be split evenly over 3 processes" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["table2", *argv[1:-2]]) == 2
    assert "table2 yopo trains with YOPO, which does not run under DistributedDataParallel" in (
        capsys.readouterr().err)


def test_plan_scales_training_by_k_and_only_the_suite_share_of_an_evaluation(tmp_path) -> None:
    from experiments.paper import table1
    from experiments.paper.estimate import _duration, parallel_time, unsharded_passes

    plan = table1.plan("paper")
    fixed = Calibration(train_s=1e-3, grad_s=1e-3, forward_s=3e-4, train_flops=1e9, grad_flops=6e8,
                        saved_bytes=1e6, parameters=1000, batch=8)

    def row(processes: int, section: int) -> str:
        lines = plan_lines({"table1": plan}, tmp_path, lambda spec: fixed, processes=processes)
        text = "\n".join(lines)
        assert ("on one GPU*" if processes == 1 else f"on {processes} GPUs*") in text
        return [line for line in lines if line.startswith("  mnist resnet")][section]

    # training: 164 epochs × (60,000 training images × 1 ms + 10,000 test forward passes × 0.3 ms), ÷ K
    seconds = 164 * (60_000 * 1e-3 + 10_000 * 3e-4)
    assert f" {_duration(seconds)} " in row(1, 0) and f" {_duration(seconds / 4)} " in row(4, 0)
    # evaluation: the unsharded passes (protocol PGD-40, FGSM, convergence check) stay whole
    unshared = unsharded_passes(plan, False, 4)
    config = plan.evaluation.config((0.1,), ode=False)
    checked = 50 / (10_000 * 4)  # 50 convergence-check images, spread over 10,000 images × 4 ε
    assert config.protocol_steps == 40
    assert unshared == pytest.approx(40 + 1 + sum(config.convergence_steps) * checked)
    assert parallel_time(100.0, 0.25, 4) == pytest.approx(25 + 75 / 4)
    one, four = row(1, 1), row(4, 1)
    assert one != four and "10000 × 4 × 142–2709" in one and "10000 × 4 × 142–2709" in four
    low = 10_000 * 4 * 142 * 1e-3  # the lower bound's passes at 1 ms each
    assert f"{_duration(low)} –" in one and f"{_duration(parallel_time(low, unshared / 142, 4))} –" in four


def test_a_finished_shard_is_kept_when_another_artefact_asks_for_the_same_evaluation(tmp_path) -> None:
    from experiments.paper.sharding import _finished
    from experiments.shards import MANIFEST

    made_by = {"config": {"eps": [0.1]}, "checkpoint": "abc", "code": {"nets": "1"}}
    assert not _finished(tmp_path, made_by)  # nothing written yet
    (tmp_path / MANIFEST).write_text(json.dumps({"identity": made_by}))
    assert _finished(tmp_path, made_by)  # a rerun (its records all resumed, no adversarials) does not rewrite
    assert not _finished(tmp_path, {**made_by, "code": {"nets": "2"}})  # other code: rewritten
    (tmp_path / MANIFEST).write_text("{broken")
    assert not _finished(tmp_path, made_by)
