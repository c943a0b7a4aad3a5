"""Figure 3: Boundary Attack (Brendel et al. 2018; 1000 queries, initial spherical and source steps 0.1)
robust accuracy vs ε, ResNet vs ODE-net, one panel per dataset.

The Boundary Attack minimises the L2 distance; as in the main job, its adversarial for each image is counted
at a budget ε when its L∞ distance is ≤ ε (the paper plots accuracy vs ε without naming the norm; its ε
grids are the L∞ ones of Figure 2).
"""

from __future__ import annotations

from pathlib import Path

from experiments.paper import curves, scales
from experiments.paper.runtime import Context
from experiments.paper.specs import Plan

TITLE = "Figure 3: Boundary Attack robust accuracy vs ε, ResNet vs ODE-net"
PAPER_NOTE = (
    "The paper gives Figure 3 as curves only, with no numbers in its text, so the paper "
    "column is empty: compare the shapes with the paper's figure (its claim: the ODE-net stays "
    "above the ResNet at every ε)."
)


def plan(scale: str) -> Plan:
    queries = scales.budget(scale, 1000, 5)
    notes = (f"Boundary Attack {queries} queries per image, spherical and source steps 0.1, L∞ threshold",)
    return curves.plan(
        "fig3",
        scale,
        {"attack": "Boundary", "queries": queries, "spherical_step": 0.1, "source_step": 0.1, "norm": "linf"},
        notes,
    )


def run(ctx: Context, plan: Plan, command: str = "") -> list[Path]:
    from attacks import BoundaryAttack

    params = plan.param_map
    return curves.run(
        ctx,
        plan,
        "Boundary",
        lambda e: BoundaryAttack(
            max_queries=params["queries"],
            spherical_step=params["spherical_step"],
            source_step=params["source_step"],
            seed=plan.evaluation.seed,
        ),
        TITLE,
        PAPER_NOTE,
        command,
    )
