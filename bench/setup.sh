#!/usr/bin/env bash
# Peers for the side-by-side benchmarks, from PyPI. --no-deps: they must use the torch already installed
# (the CPU build), never pull another one or torchvision (torchattacks imports without it; foolbox needs
# GitPython at import).
set -euo pipefail
python -m pip install --no-deps "torchdiffeq==0.2.5"
python -m pip install --no-deps "torchode==1.0.1" "torchtyping==0.1.5" "typeguard==2.13.3"  # needs sympy
python -m pip install --no-deps "torchattacks==3.5.1" "foolbox==3.3.4" "eagerpy==0.30.0" \
    "GitPython==3.2.1" "gitdb==4.0.12" "smmap==5.0.3"
# AutoAttack's reference code (APGD, APGD-T, Square) for bench/crosscheck_autoattack.py and bench_autoattack.py
python -m pip install --no-deps "pyautoattack==0.2.0"
