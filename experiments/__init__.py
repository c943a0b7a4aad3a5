"""Command-line entry points and long runs (``python -m experiments.train ...``)."""

import os

from experiments.isa import pin_kernels_to_avx2

# Set before torch loads OpenMP (``python -m experiments.X`` imports this package first): on a shared
# machine, spinning OpenMP workers slow convolutions several-fold. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Before torch picks its CPU kernels: the same instruction set on every x86 machine, so that a number
# computed on one CPU kind is reproduced byte for byte on another (docs/reproducibility.md).
pin_kernels_to_avx2()
