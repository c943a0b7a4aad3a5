"""The CPU kernels' instruction set, pinned to AVX2 on machines that have more.

ATen and oneDNN dispatch their CPU kernels by instruction set, and the AVX-512 kernels round differently
from the AVX2 ones: a few ulps per step are enough for a small model's training to take another trajectory,
and every number after it moves (docs/reproducibility.md measures it). Our commands therefore run the AVX2
kernels wherever the CPU has AVX-512, so that a result made on one x86 machine is reproduced on another.
This must happen before torch chooses its kernels, so ``experiments/__init__.py`` calls it before anything
imports torch. No torch import here.

- An explicit ``ATEN_CPU_CAPABILITY`` or ``ONEDNN_MAX_CPU_ISA`` in the environment wins.
- ``NR_NATIVE_ISA=1`` keeps the CPU's own kernels (faster on AVX-512, not reproducible across CPU kinds).
- On a CPU without AVX-512 (AVX2 machines, other architectures) nothing is set: those already run the kernels
  the pin asks for, or ones the pin cannot name.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

#: what the pin sets, each unless already set
AVX2_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: the opt-out
NATIVE_VARIABLE = "NR_NATIVE_ISA"
_TRUE = {"1", "true", "yes", "on"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first CPU in ``cpuinfo`` (empty: no such file, or no flags)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def pin_kernels_to_avx2(environ: MutableMapping[str, str] | None = None,
                        flags: frozenset[str] | None = None) -> dict[str, str]:
    """Set :data:`AVX2_PINS` in ``environ`` (default ``os.environ``) when the CPU has both AVX2 and AVX-512
    and :data:`NATIVE_VARIABLE` is not set true; returns what it set (nothing set: ``{}``)."""
    environ = os.environ if environ is None else environ
    if environ.get(NATIVE_VARIABLE, "").strip().lower() in _TRUE:
        return {}
    flags = cpu_flags() if flags is None else flags
    if not {"avx2", "avx512f"} <= flags:
        return {}
    pinned = {name: value for name, value in AVX2_PINS.items() if name not in environ}
    environ.update(pinned)
    return pinned
