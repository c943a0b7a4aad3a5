"""Loading a trained model back from its run directory (or ``model.pt``) through the registry."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from nets.training.state import MODEL_NAME, load_checkpoint


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
    return model.to(device).eval()
