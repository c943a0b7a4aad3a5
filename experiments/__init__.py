"""Command-line entry points and long runs (``python -m experiments.train ...``)."""

import os

# Set before torch loads OpenMP (``python -m experiments.X`` imports this package first): on a shared
# machine, spinning OpenMP workers slow convolutions several-fold. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
