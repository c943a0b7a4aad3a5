"""Run state on disk: global RNG states, atomic checkpoint / JSON writes, and checkpoint reading.

Files are written with the project's one atomic writer (:func:`attacks.table.atomic_write`): a temporary file
in the same folder, fsynced and moved into place, so a run killed mid-write never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storage.atomic import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
RESULTS_NAME = "results.json"
MODEL_NAME = "model.pt"
FORMAT_VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain types (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through the project's atomic writer: never half-written."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as indented JSON through the project's atomic writer."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint / ``model.pt`` written by :func:`train` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    if path.stat().st_size == 0:
        raise RuntimeError(
            f"{str(path)!r} is not a readable checkpoint: the file is empty (0 bytes; a write that never "
            "finished?): delete it and rerun"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = str(error).strip() or type(error).__name__
        raise RuntimeError(
            f"{str(path)!r} is not a readable checkpoint (corrupt or foreign?): {reason}"
        ) from error
