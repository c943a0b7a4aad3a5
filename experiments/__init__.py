"""Command-line entry points and long runs (``python -m experiments.train ...``)."""
