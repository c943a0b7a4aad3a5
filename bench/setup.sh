#!/usr/bin/env bash
# Peers for the side-by-side benchmarks, from PyPI. --no-deps: they must use the torch already installed
# (the CPU build), never pull another one or torchvision.
set -euo pipefail
python -m pip install --no-deps "torchdiffeq==0.2.5"
