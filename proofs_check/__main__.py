"""``python -m proofs_check --help``."""

import sys

from experiments.cli import run
from proofs_check.cli import main

sys.exit(run(main))
