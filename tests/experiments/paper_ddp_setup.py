"""The tiny Table 1 of the paper's torchrun tests (``test_experiments_paper_ddp.py``): MNIST only, models
whose training does not depend on how the global batch is split over the processes (no BatchNorm: an MLP for
the "resnet"; the ODE-net with fixed RK4 steps and backprop), an SGD recipe mild enough that float rounding
does not grow over its 12-15 steps, and 8 attacked images in 4 batches of 2 (2 per process).

``install()`` puts it in place: the launcher script does so in every process it starts, and a one-process
run in the test's own process does so with ``pytest.MonkeyPatch.setattr`` (undone afterwards)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch.nn as nn

from experiments.paper import scales, table1
from experiments.paper.specs import EvalSpec, model, recipe
from nets.registry import register_model

_EVALUATION = scales.evaluation  # the smoke evaluation this one shrinks (taken before any install)


@register_model("ddp_paper_tiny")
def ddp_paper_tiny(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(64 * in_channels, 16),
                         nn.Tanh(), nn.Linear(16, num_classes))


def table1_models(scale: str, dataset: str) -> dict:
    short = "mnist" if dataset == "mnist" else "cifar"
    how = recipe(epochs=3, batch_size=32, optimizer="sgd", lr=0.02, momentum=0.9,
                 limit_train=scales.SMOKE_TRAIN)
    return {"resnet": model("ddp_paper_tiny", dataset, how),
            "odenet": model(f"odenet_{short}_small", dataset, how, channels=4, method="rk4", step_size=0.25,
                            gradient="backprop")}


def evaluation(scale: str) -> EvalSpec:
    return dataclasses.replace(_EVALUATION(scale), samples=8, batch_size=2)


def install(set_attribute: Callable = setattr) -> None:
    """Table 1's models, evaluation and datasets as above (CIFAR-10's path is the smoke run's)."""
    set_attribute(scales, "table1_models", table1_models)
    set_attribute(scales, "evaluation", evaluation)
    set_attribute(table1, "DATASETS", ("mnist",))
