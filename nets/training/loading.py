"""Loading a trained model back from its run directory (or ``model.pt``) through the registry."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from nets.training.state import MODEL_NAME, RESULTS_NAME, load_checkpoint
from stability import SolverOptions


def load_trained_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from a run directory or its ``model.pt`` via the registry, in eval mode."""
    from nets.registry import build_model

    path = Path(path)
    state = load_checkpoint(path / MODEL_NAME if path.is_dir() else path, map_location=device)
    spec = state.get("model_spec")
    if not spec or "name" not in spec:
        raise ValueError(f"{str(path)!r} records no model_spec (name, kwargs); build the model yourself")
    model = build_model(spec["name"], **spec.get("kwargs", {}))
    model.load_state_dict(state["model"])
    _warn_if_trained_under_other_solver_options(model, path if path.is_dir() else path.parent)
    return model.to(device).eval()


def solver_option_stamps(model: nn.Module) -> list[dict[str, str]]:
    """Every ODE block's solver options (``stability.SolverOptions``) as ``{field: repr(value)}``, in
    module order: what a trained ODE model's weights depend on besides its recipe (e.g. the controller)."""
    return [
        {f.name: repr(getattr(options, f.name)) for f in dataclasses.fields(options)}
        for options in map(_solver_options, model.modules())
        if options is not None
    ]


def _solver_options(module: nn.Module) -> SolverOptions | None:
    options = getattr(module, "options", None)
    return options if isinstance(options, SolverOptions) else None


def _warn_if_trained_under_other_solver_options(model: nn.Module, run_dir: Path) -> None:
    """A cached model is keyed by its recipe, not by the solver code that trained it: warn when a solver
    option recorded at training (``results.json``) differs from the rebuilt model's today (options added
    since are not compared)."""
    try:
        recorded = json.loads((run_dir / RESULTS_NAME).read_text()).get("solver_options")
    except (OSError, ValueError, AttributeError):
        return  # no record (a model.pt on its own, or written before the stamp): nothing to compare
    if not isinstance(recorded, list) or not all(isinstance(stamp, dict) for stamp in recorded):
        return  # not a stamp this code wrote
    current = solver_option_stamps(model)
    changed = [
        f"{name}: {then} -> {now[name]}"
        for old, now in zip(recorded, current)
        for name, then in old.items()
        if name in now and now[name] != then
    ]
    if changed or len(recorded) != len(current):
        what = "; ".join(changed) or "another number of ODE blocks"
        warnings.warn(
            f"the model in {str(run_dir)!r} was trained with other solver options ({what}): its weights "
            "reflect the old ones; delete the folder to retrain with today's",
            stacklevel=3,
        )
