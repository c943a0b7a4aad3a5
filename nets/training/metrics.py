"""Evaluation metrics: clean accuracy and mean cross-entropy on a dataset, sharded over processes."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets.datasets import BatchIterator, ImageDataset
from nets.training.distributed import DistributedContext, _all_reduce_sum, unwrap_model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
    context: DistributedContext | None = None,
) -> dict[str, float]:
    """Clean accuracy and mean cross-entropy of ``model`` (eval mode) on ``dataset``.

    With a distributed ``context`` each process evaluates a contiguous shard (no padding, so every sample
    counts once) and the sums are all-reduced. Returns ``{"accuracy", "loss", "n"}``.
    """
    context = context or DistributedContext()
    model = unwrap_model(model)
    if device is None:
        device = next(model.parameters()).device
    n = len(dataset)
    lo, hi = n * context.rank // context.world_size, n * (context.rank + 1) // context.world_size
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    try:
        if hi > lo:
            for x, y in BatchIterator(dataset.subset(slice(lo, hi)), batch_size, device=device):
                logits = model(x)
                sums[0] += (logits.argmax(dim=1) == y).sum()
                sums[1] += F.cross_entropy(logits.float(), y, reduction="sum").double()
                sums[2] += y.numel()
    finally:
        model.train(was_training)
    correct, loss_sum, count = _all_reduce_sum(sums, context).tolist()
    return {"accuracy": correct / count, "loss": loss_sum / count, "n": int(count)}
