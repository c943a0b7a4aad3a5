"""One model specification and one model cache (experiments.models): validation, the key, and a model
trained by ``experiments.train --models`` found by the main job."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from experiments import robustness
from experiments import train as train_command
from experiments.models import Loss, ModelSpec, cache_folder
from nets.training import TrainConfig
from tests.nets.test_data import write_mnist

RECIPE = TrainConfig(epochs=1, batch_size=16, optimizer="adam", lr=1e-3)


@pytest.mark.parametrize("change, message", [
    (dict(name="no_such_net"), "unknown model 'no_such_net'"),
    (dict(dataset="svhn"), "unknown dataset 'svhn'"),
    (dict(kwargs=(("colour", 3),)), "does not accept ['colour']"),
    (dict(limit_train=0), "limit_train must be None or >= 1"),
])
def test_a_bad_specification_is_refused_with_its_reason(change, message):
    spec = ModelSpec.of("mnist_resnet_small", "mnist", RECIPE, width=2)
    with pytest.raises(ValueError) as error:
        dataclasses.replace(spec, **change)
    assert message in str(error.value)
    with pytest.raises(ValueError, match="adversarial training needs loss eps > 0"):
        Loss("pgd-at", eps=0.0)
    with pytest.raises(TypeError, match="TrainConfig"):
        ModelSpec("mnist_resnet_small", "mnist", {"epochs": 1})


def test_the_key_names_every_setting_and_only_the_settings():
    spec = ModelSpec.of("mnist_resnet_small", "mnist", RECIPE, width=2)
    same = ModelSpec.of("MNIST_resnet_small", "mnist", TrainConfig(epochs=1, batch_size=16, optimizer="Adam",
                                                                   lr=1e-3), width=2)
    assert same == spec and same.key() == spec.key() and len(spec.key()) == 16
    others = [
        dataclasses.replace(spec, train=RECIPE.replace(seed=1)),
        dataclasses.replace(spec, limit_train=32),
        dataclasses.replace(spec, augment=False),
        dataclasses.replace(spec, loss=Loss("pgd-at", eps=0.1)),
        ModelSpec.of("mnist_resnet_small", "mnist", RECIPE, width=4),
        ModelSpec.of("mnist_resnet_small", "cifar10", RECIPE, width=2),
    ]
    assert len({spec.key(), *(other.key() for other in others)}) == len(others) + 1
    assert cache_folder(spec, "models").name == f"mnist_resnet_small-{spec.key()}"
    assert spec.code().keys() == {"stability", "nets"} and "attacks" in others[3].code()


@pytest.mark.slow  # a tiny training and a model load, ~6 s
def test_a_model_trained_by_experiments_train_serves_the_main_job(tmp_path, capsys):
    write_mnist(tmp_path / "data", n_train=32, n_test=8)
    models = tmp_path / "models"
    summary = train_command.main([
        "--model", "mnist_resnet_small", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
        "--no-verify", "--epochs", "1", "--batch-size", "128", "--optimizer", "sgd", "--lr", "0.1",
        "--momentum", "0.9", "--nesterov", "--weight-decay", "5e-4", "--schedule", "onecycle", "--seed", "0",
        "--limit-train", "32", "--model-arg", "width=2", "--device", "cpu", "--no-progress",
        "--models", str(models)])
    (folder,) = models.iterdir()
    assert summary["out"] == str(folder)
    assert (folder / "code.json").is_file() and (folder / "spec.json").is_file()
    weights = torch.load(folder / "model.pt", weights_only=True)["model"]

    argv = ["--data-dir", str(tmp_path / "data"), "--no-verify", "--out", str(tmp_path / "out"),
            "--models", str(models), "--train-epochs", "1", "--train-limit", "32", "--resnet-arg", "width=2",
            "--device", "cpu", "--no-progress"]
    args = robustness.build_parser().parse_args(argv)
    plan = robustness.plan_models(args, tmp_path / "out")[0]
    assert plan.label == "resnet" and plan.run_dir == folder
    entry = robustness.ensure_trained(plan, args)
    assert not entry.computed and "using the trained mnist_resnet_small" in capsys.readouterr().out
    for name, tensor in entry.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_train_wants_exactly_one_destination(tmp_path):
    from experiments.cli import UsageError

    base = ["--model", "mnist_resnet_small", "--dataset", "mnist", "--epochs", "1"]
    for extra in ([], ["--out", str(tmp_path / "a"), "--models", str(tmp_path / "b")]):
        with pytest.raises(UsageError, match="exactly one of --out DIR"):
            train_command.main([*base, *extra])
