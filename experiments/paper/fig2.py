"""Figure 2: DI²-FGSM robust accuracy vs ε (MNIST up to 0.5, CIFAR-10 up to 50/255; ε = 0 is clean
accuracy), ResNet vs ODE-net, one panel per dataset.

The attack is ``attacks.DI2FGSM`` as in Xie et al. 2019: ``steps`` iterations of α = ε / steps, input
diversity with probability 0.5 (the paper's resize-and-pad), no momentum, no random start; the paper does not
state the iteration count, we use Xie et al.'s 10.
"""

from __future__ import annotations

from pathlib import Path

from experiments.paper import curves, scales
from experiments.paper.runtime import Context
from experiments.paper.specs import Plan

TITLE = "Figure 2: DI²-FGSM robust accuracy vs ε, ResNet vs ODE-net"
PAPER_NOTE = (
    "The paper gives Figure 2 as curves only, with no numbers in its text, so the paper "
    "column is empty: compare the shapes with the paper's figure (its claim: the ODE-net stays "
    "above the ResNet at every ε)."
)


def plan(scale: str) -> Plan:
    steps = scales.budget(scale, 10, 2)
    notes = (f"DI²-FGSM {steps} iterations, α = ε/{steps}, diversity probability 0.5",)
    return curves.plan(
        "fig2", scale, {"attack": "DI2-FGSM", "steps": steps, "diversity_prob": 0.5, "decay": 0.0}, notes
    )


def run(ctx: Context, plan: Plan, command: str = "") -> list[Path]:
    from attacks import DI2FGSM

    params = plan.param_map
    return curves.run(
        ctx,
        plan,
        "DI2-FGSM",
        lambda e: DI2FGSM(
            e,
            steps=params["steps"],
            diversity_prob=params["diversity_prob"],
            decay=params["decay"],
            seed=plan.evaluation.seed,
        ),
        TITLE,
        PAPER_NOTE,
        command,
    )
