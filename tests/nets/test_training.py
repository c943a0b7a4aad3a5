"""Training loop: resume equals an uninterrupted run, checkpoints, schedules, hooks, registry and CLI."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from nets.datasets import ImageDataset, RandomCropFlip
from nets.registry import (
    accepted_kwargs,
    available_models,
    build_model,
    register_model,
    unregister_model,
)
from nets.training import (
    ResumeMismatchError,
    TrainConfig,
    build_optimizer,
    build_scheduler,
    evaluate,
    load_checkpoint,
    load_trained_model,
    pop_solver_stats,
    train,
)


def synthetic_dataset(n: int, seed: int, classes: int = 4) -> ImageDataset:
    """Learnable toy data: class k brightens quadrant k of a noisy 1 x 6 x 6 image."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    images = torch.randint(0, 100, (n, 1, 6, 6), generator=generator)
    for k in range(classes):
        rows, cols = divmod(k, 2)
        images[labels == k, :, rows * 3 : rows * 3 + 3, cols * 3 : cols * 3 + 3] += 150
    return ImageDataset(images.to(torch.uint8), labels, name="toy", classes=tuple("abcd"[:classes]))


class TinyNet(nn.Module):
    """No batch statistics; dropout makes the global RNG state matter for exact resume."""

    def __init__(self, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(36, hidden), nn.Tanh(), nn.Dropout(0.25))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny_model(seed: int) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


CONFIG = dict(
    epochs=3,
    batch_size=8,
    optimizer="sgd",
    lr=0.2,
    momentum=0.9,
    weight_decay=1e-3,
    schedule="multistep",
    milestones=(2,),
    seed=7,
)


class Interrupt(Exception):
    pass


def test_run_killed_in_epoch_two_and_resumed_equals_uninterrupted_run(tmp_path):
    train_set, test_set = synthetic_dataset(40, 0), synthetic_dataset(16, 1)
    augment = RandomCropFlip(padding=1)
    config = TrainConfig(**CONFIG)
    full = train(
        tiny_model(0), train_set, test_set, config, tmp_path / "full", augment=augment, progress=False
    )

    def kill(info):
        if info.epoch == 2 and info.step == 2:
            raise Interrupt  # dies mid-epoch: the epoch-1 checkpoint is all that survives

    with pytest.raises(Interrupt):
        train(
            tiny_model(0),
            train_set,
            test_set,
            config,
            tmp_path / "cut",
            augment=augment,
            on_batch_end=kill,
            progress=False,
        )
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["status"] == "running"
    resumed = train(
        tiny_model(123),
        train_set,
        test_set,
        config,
        tmp_path / "cut",
        augment=augment,
        resume=True,
        progress=False,
    )
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    strip = ("epoch_time_s", "eval_time_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in full.history] == [
        {k: v for k, v in r.items() if k not in strip} for r in resumed.history
    ]
    assert full.history[-1]["test_accuracy"] > 0.5  # it learned something (chance is 0.25)
    results = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert results["status"] == "finished" and len(results["history"]) == 3
    assert results["final"]["test_accuracy"] == resumed.test_accuracy


def test_resume_does_not_depend_on_seeding_luck(tmp_path):
    """Control for the test above: a different data seed gives different weights."""
    train_set = synthetic_dataset(40, 0)
    a = train(tiny_model(0), train_set, None, TrainConfig(**CONFIG), tmp_path / "a", progress=False)
    b = train(
        tiny_model(0), train_set, None, TrainConfig(**{**CONFIG, "seed": 8}), tmp_path / "b", progress=False
    )
    assert not torch.equal(a.model.head.weight, b.model.head.weight)


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    config = TrainConfig(**{**CONFIG, "epochs": 1})
    train(
        tiny_model(0),
        synthetic_dataset(16, 0),
        synthetic_dataset(8, 1),
        config,
        tmp_path,
        model_spec={"name": "tiny", "kwargs": {"hidden": 16}},
        progress=False,
    )
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "data", "rng", "config", "history"} <= set(checkpoint)
    assert checkpoint["data"]["generator"].dtype == torch.uint8
    assert {"torch", "numpy", "python"} <= set(checkpoint["rng"][0])
    assert checkpoint["config"]["milestones"] == [2] and checkpoint["model_spec"]["kwargs"] == {"hidden": 16}
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.equal(final["model"]["head.weight"], checkpoint["model"]["head.weight"])
    results = json.loads((tmp_path / "results.json").read_text())
    record = results["history"][0]
    assert {"train_loss", "test_accuracy", "test_loss", "epoch_time_s", "lr", "train_solver_stats"} <= set(
        record
    )
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_existing_run_is_never_overwritten_and_config_must_match(tmp_path):
    train_set = synthetic_dataset(16, 0)
    train(tiny_model(0), train_set, None, TrainConfig(**{**CONFIG, "epochs": 1}), tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(
            tiny_model(0), train_set, None, TrainConfig(**{**CONFIG, "epochs": 1}), tmp_path, progress=False
        )
    with pytest.raises(ResumeMismatchError, match="lr"):
        train(
            tiny_model(0),
            train_set,
            None,
            TrainConfig(**{**CONFIG, "epochs": 1, "lr": 0.3}),
            tmp_path,
            resume=True,
            progress=False,
        )
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    checkpoint["rng"] = checkpoint["rng"] * 2  # as if written by 2 processes
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="same number of processes"):
        train(
            tiny_model(0),
            train_set,
            None,
            TrainConfig(**{**CONFIG, "epochs": 1}),
            tmp_path,
            resume=True,
            progress=False,
        )


def test_non_finite_loss_raises_before_any_checkpoint(tmp_path):
    def nan_loss(model, x, y):
        return model(x).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="epoch 1"):
        train(
            tiny_model(0),
            synthetic_dataset(16, 0),
            None,
            TrainConfig(**CONFIG),
            tmp_path,
            loss_fn=nan_loss,
            progress=False,
        )
    assert not (tmp_path / "checkpoint.pt").exists()


def test_loss_fn_hook_receives_model_and_unit_interval_batches(tmp_path):
    calls = []

    def loss_fn(model, x, y):
        calls.append((x.shape, x.dtype, float(x.min()), float(x.max()), y.dtype))
        return nn.functional.cross_entropy(model(x), y) * 0.5

    config = TrainConfig(**{**CONFIG, "epochs": 1})
    result = train(
        tiny_model(0), synthetic_dataset(20, 0), None, config, tmp_path, loss_fn=loss_fn, progress=False
    )
    assert len(calls) == 3 and calls[0][0] == (8, 1, 6, 6) and calls[-1][0][0] == 4
    assert all(c[1] == torch.float32 and c[2] >= 0 and c[3] <= 1 and c[4] == torch.int64 for c in calls)
    assert result.history[0]["train_samples"] == 20
    with pytest.raises(ValueError, match="scalar"):
        train(
            tiny_model(0),
            synthetic_dataset(20, 0),
            None,
            config,
            tmp_path / "b",
            progress=False,
            loss_fn=lambda m, x, y: nn.functional.cross_entropy(m(x), y, reduction="none"),
        )


class CountingBlock(nn.Module):
    """Reports how many times it ran, like an adaptive solver reporting its NFE."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(36, 4)
        self.nfe = 0

    def forward(self, x):
        self.nfe += 1
        return self.linear(x.flatten(1))

    def pop_solver_stats(self):
        stats, self.nfe = {"nfe": self.nfe}, 0
        return stats


class CountingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = CountingBlock()

    def forward(self, x):
        return self.block(x)


def test_solver_stats_are_recorded_per_phase(tmp_path):
    model = CountingModel()
    model.block.nfe = 1000  # stale counts from before training are discarded
    config = TrainConfig(**{**CONFIG, "epochs": 2, "eval_batch_size": 5})
    result = train(
        model, synthetic_dataset(24, 0), synthetic_dataset(12, 1), config, tmp_path, progress=False
    )
    assert [r["train_solver_stats"] for r in result.history] == [{"nfe": 3}, {"nfe": 3}]
    assert [r["test_solver_stats"] for r in result.history] == [{"nfe": 3}, {"nfe": 3}]
    assert pop_solver_stats(model) == {"nfe": 0}  # reset by the loop
    assert pop_solver_stats(TinyNet()) == {}  # plain models report nothing

    class Aggregating(CountingModel):  # reports for its children itself: must not be counted twice
        def pop_solver_stats(self):
            return {"nfe": self.block.pop_solver_stats()["nfe"], "calls": 1}

    model = Aggregating()
    model(torch.zeros(2, 1, 6, 6))
    model(torch.zeros(2, 1, 6, 6))
    assert pop_solver_stats(model) == {"nfe": 2, "calls": 1}


def test_evaluate_counts_exactly():
    dataset = synthetic_dataset(30, 3)

    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            quadrants = torch.stack(
                [x[:, 0, r : r + 3, c : c + 3].mean((1, 2)) for r in (0, 3) for c in (0, 3)], 1
            )
            return quadrants * 100

    metrics = evaluate(Oracle(), dataset, batch_size=7)
    assert metrics["accuracy"] == 1.0 and metrics["n"] == 30
    flipped = ImageDataset(dataset.images, (dataset.labels + 1) % 4, classes=dataset.classes)
    assert evaluate(Oracle(), flipped, batch_size=4)["accuracy"] == 0.0
    assert math.isfinite(metrics["loss"])


def test_schedules_follow_their_definitions():
    steps = 10

    def lrs(**overrides):
        config = TrainConfig(**{**CONFIG, "epochs": 4, **overrides})
        optimizer = build_optimizer(nn.Linear(2, 2).parameters(), config)
        scheduler = build_scheduler(optimizer, config, steps)
        out = []
        for _ in range(config.epochs * steps):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return np.array(out)

    multistep = lrs(schedule="multistep", milestones=(1, 3), lr=0.1)
    assert np.allclose(multistep[:10], 0.1) and np.allclose(multistep[10:30], 0.01)
    assert np.allclose(multistep[30:], 0.001)
    default = TrainConfig(epochs=160, schedule="multistep").resolved_milestones()
    assert default == (80, 120)
    assert np.allclose(lrs(schedule="constant"), 0.2)
    cosine = lrs(schedule="cosine", lr=0.1)
    t = np.arange(40)
    assert np.allclose(cosine, 0.05 * (1 + np.cos(np.pi * t / 40)))
    onecycle = lrs(schedule="onecycle", lr=0.1)
    assert abs(onecycle.max() - 0.1) < 1e-3 and onecycle[0] < 0.01 and onecycle[-1] < 1e-3
    assert int(onecycle.argmax()) in range(10, 14)  # warm-up over ~30 % of 40 steps
    adam = build_optimizer(nn.Linear(2, 2).parameters(), TrainConfig(epochs=1, optimizer="adam", lr=1e-3))
    assert isinstance(adam, torch.optim.Adam)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(epochs=1, schedule="exponential")
    with pytest.raises(ValueError, match="nesterov"):
        TrainConfig(epochs=1, optimizer="adam", nesterov=True)


# ------------------------------------------------------------------------------------ registry


def test_registry_builds_lists_and_rejects():
    @register_model("test_tiny_registry")
    def factory(hidden: int = 16, classes: int = 4) -> nn.Module:
        return TinyNet(hidden, classes)

    try:
        assert "test_tiny_registry" in available_models()
        assert build_model("Test_Tiny_Registry", hidden=3).head.in_features == 3
        assert accepted_kwargs("test_tiny_registry") == {"hidden", "classes"}
        with pytest.raises(TypeError, match="step_size"):
            build_model("test_tiny_registry", step_size=0.1)
        with pytest.raises(ValueError, match="already registered"):
            register_model("test_tiny_registry")(lambda: TinyNet())
        with pytest.raises(KeyError, match="available"):
            build_model("no_such_model")
    finally:
        unregister_model("test_tiny_registry")
    assert "test_tiny_registry" not in available_models()


# ----------------------------------------------------------------------------------------- CLI


def write_tiny_mnist(directory, n_train=24, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        images[np.arange(n), 2 * labels, 5] = 255  # a learnable cue
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (directory / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))


class FlatNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, step_size: float = 1.0, width: int = 8) -> None:
        super().__init__()
        self.step_size = step_size
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * 28 * 28, width), nn.ReLU(), nn.Linear(width, num_classes)
        )

    def forward(self, x):
        return self.net(x)


def test_cli_trains_resumes_and_records_model_spec(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NR_DATA_DIR", raising=False)
    from experiments.cli import run
    from experiments.train import main

    write_tiny_mnist(tmp_path / "data" / "MNIST" / "raw")
    register_model("test_cli_flatnet")(FlatNet)
    try:
        args = [
            "--model",
            "test_cli_flatnet",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path / "data"),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--schedule",
            "cosine",
            "--out",
            str(tmp_path / "run"),
            "--seed",
            "3",
            "--no-verify",
            "--no-progress",
            "--device",
            "cpu",
            "--step-size",
            "0.5",
            "--model-arg",
            "width=5",
            "--limit-train",
            "16",
        ]
        summary = main(args)
        out = capsys.readouterr().out
        assert out.count("FINAL ") == 1 and "test_accuracy=" in out and "wall_time_s=" in out
        results = json.loads((tmp_path / "run" / "results.json").read_text())
        assert results["model_spec"] == {
            "name": "test_cli_flatnet",
            "kwargs": {"in_channels": 1, "num_classes": 10, "step_size": 0.5, "width": 5},
        }
        assert results["dataset"] == {"name": "mnist", "train_size": 16, "test_size": 10}
        assert summary["test_accuracy"] == results["history"][-1]["test_accuracy"]
        model = load_trained_model(tmp_path / "run")
        assert model.step_size == 0.5 and model.net[1].out_features == 5 and not model.training
        assert torch.equal(
            model.net[1].weight, torch.load(tmp_path / "run" / "model.pt")["model"]["net.1.weight"]
        )
        with pytest.raises(FileExistsError):
            main(args)
        capsys.readouterr()
        assert run(main, [*args, "--resume", "--lr", "0.02"]) == 2  # a usage error, named in one line
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "cannot resume" in error and "lr: 0.01 -> 0.02" in error
        main([*args, "--resume"])  # already finished: nothing left to train, files rewritten identically
        assert json.loads((tmp_path / "run" / "results.json").read_text())["history"] == results["history"]
        with pytest.raises(SystemExit, match="unknown model"):
            main([*args[:1], "no_such_model", *args[2:]])
    finally:
        unregister_model("test_cli_flatnet")


def test_a_model_trained_under_other_solver_options_warns_when_loaded(tmp_path):
    """The model cache keys a model by its recipe, not by the solver code that trained it: the solver options
    an ODE model was trained with are recorded, and loading it under other ones says so."""
    import warnings

    from nets.training import load_trained_model

    torch.manual_seed(0)
    model = build_model("odenet_mnist_small", channels=2)
    config = TrainConfig(**{**CONFIG, "epochs": 1})
    spec = {"name": "odenet_mnist_small", "kwargs": {"channels": 2}}
    train(model, synthetic_dataset(16, 0), None, config, tmp_path, progress=False, model_spec=spec)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["solver_options"][0]["rtol"] == repr(model.ode_block.options.rtol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trained_model(tmp_path)  # the same options today: silent
    results["solver_options"][0]["retired_option"] = "1"  # an option that no longer exists: not compared
    (tmp_path / "results.json").write_text(json.dumps(results))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trained_model(tmp_path)
    old_default = "PIController(safety=0.9, min_factor=0.2, max_factor=10.0, beta=0.04)"
    results["solver_options"][0]["controller"] = old_default
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.warns(UserWarning, match="other solver options .*controller: PIController.*beta=0.04"):
        load_trained_model(tmp_path)


def test_an_empty_or_foreign_checkpoint_is_named_with_a_reason(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"not a readable checkpoint: the file is empty \(0 bytes"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "short.pt").write_bytes(b"\x80")
    with pytest.raises(RuntimeError, match="not a readable checkpoint") as error:
        load_checkpoint(tmp_path / "short.pt")
    assert not str(error.value).rstrip().endswith(":")  # a reason follows, never an empty one


ENFORCE_FAIL = ("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/0: "
                "file write failed")


def test_a_full_disk_is_named_not_a_serializer_assertion(tmp_path, monkeypatch):
    import errno

    import storage.atomic
    from nets.training import atomic_torch_save
    from storage.atomic import DiskFullError, atomic_write

    def torch_save_on_a_full_disk(obj, handle):
        raise RuntimeError(ENFORCE_FAIL)

    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    monkeypatch.setattr(storage.atomic, "free_bytes", lambda folder: 4096)
    with pytest.raises(DiskFullError, match="no space left on the disk to write .*c.pt"):
        atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    monkeypatch.setattr(storage.atomic, "free_bytes", lambda folder: 2**40)  # room left: not a full disk
    with pytest.raises(RuntimeError, match="inline_container"):
        atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")

    def enospc(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="no space left"):
        atomic_write(tmp_path / "d.txt", enospc)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_training_checks_free_space_before_the_first_epoch(tmp_path, monkeypatch):
    import storage.atomic
    from experiments.cli import run
    from storage.atomic import DiskFullError

    monkeypatch.setattr(storage.atomic, "free_bytes", lambda folder: 1000)
    batches = []
    with pytest.raises(DiskFullError, match="not enough free disk space for the per-epoch checkpoint"):
        train(tiny_model(0), synthetic_dataset(16, 0), None, TrainConfig(**CONFIG), tmp_path,
              on_batch_end=batches.append, progress=False)
    assert batches == []  # refused before any work

    def command(argv, outputs=None):
        train(tiny_model(0), synthetic_dataset(16, 0), None, TrainConfig(**CONFIG), tmp_path / "b",
              progress=False)

    assert run(command, []) == 2
