"""The training command under ``torchrun`` (2 gloo processes) matches 1 process with the same global batch."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

# No batch statistics (BatchNorm would see per-process batches and break the equality).
MODELS_MODULE = textwrap.dedent(
    """
    import torch.nn as nn
    from nets.registry import register_model

    @register_model("ddp_test_tiny")
    def ddp_test_tiny(in_channels: int, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, 12), nn.Tanh(),
                             nn.Linear(12, num_classes))
    """
)


def write_tiny_mnist(directory: Path, n_train: int, n_test: int) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        images[np.arange(n), 2 * labels, 5] = 255
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (directory / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))


def train_args(data: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "--import",
        "ddp_test_models",
        "--model",
        "ddp_test_tiny",
        "--dataset",
        "mnist",
        "--data-dir",
        str(data),
        "--epochs",
        "3",
        "--batch-size",
        str(batch_size),
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--weight-decay",
        "1e-3",
        "--schedule",
        "multistep",
        "--milestones",
        "2",
        "--out",
        str(out),
        "--seed",
        "5",
        "--no-verify",
        "--no-progress",
        "--device",
        "cpu",
    ]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process_with_same_global_batch(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_tiny_mnist(data, n_train=48, n_test=10)  # 48 = 3 global batches of 16: no padding
    (tmp_path / "ddp_test_models.py").write_text(MODELS_MODULE)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    env.pop("NR_DATA_DIR", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "experiments.train",
        *train_args(data, tmp_path / "ddp", batch_size=8),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("FINAL ") == 1 and "world_size=2 global_batch_size=16" in done.stdout

    monkeypatch.syspath_prepend(str(tmp_path))
    from experiments.train import main
    from nets.registry import unregister_model

    try:
        main(train_args(data, tmp_path / "single", batch_size=16))
        main(train_args(data, tmp_path / "single_small_batch", batch_size=8))
    finally:
        unregister_model("ddp_test_tiny")
        sys.modules.pop("ddp_test_models", None)

    ddp, single, control = (
        weights(tmp_path / "ddp"),
        weights(tmp_path / "single"),
        weights(tmp_path / "single_small_batch"),
    )
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6)
    assert (
        max((control[name] - single[name]).abs().max().item() for name in single) > 1e-3
    )  # the test can fail
    history_ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    history_single = json.loads((tmp_path / "single" / "results.json").read_text())
    assert history_ddp["world_size"] == 2 and history_ddp["global_batch_size"] == 16
    for a, b in zip(history_ddp["history"], history_single["history"]):
        assert a["train_samples"] == b["train_samples"] == 48
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
