"""Peak tensor memory of a computation, on CPU as well as CUDA — for comparing gradient methods honestly.

CUDA: the caching allocator's ``max_memory_allocated``. CPU has no allocator statistics, so the CPU path
replays torch's own allocation/free events (``torch.profiler`` with ``profile_memory=True``): the running sum
of allocated bytes, whose maximum is the peak. Both count tensor storage only (not Python objects), are
deterministic for a deterministic computation, and report bytes above what was allocated at the start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def peak_memory(fn: Callable[[], T], device: torch.device | str | None = None) -> tuple[T, int]:
    """Run ``fn()`` and return (its result, peak bytes of tensor memory allocated on ``device`` above the
    level at the start). ``device`` defaults to CPU; a CUDA device uses the CUDA allocator statistics."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        raise ValueError(f"peak_memory supports cpu and cuda devices, got {device}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = fn()
    try:
        raw_events = profiler.profiler.kineto_results.events()
    except AttributeError as error:  # pragma: no cover - depends on the torch build
        raise RuntimeError(
            "this torch build's profiler exposes no allocation events; measure peak memory on CUDA or in a "
            "fresh process (resource.getrusage) instead"
        ) from error
    events = [
        (event.start_ns(), event.nbytes())
        for event in raw_events
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda item: item[0])
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return result, peak
