"""``python -m proofs_check`` was the bound-verification command; it is ``python -m experiments.bounds`` now
(command lines live in ``experiments``). One line saying so, exit status 2."""

import sys

if __name__ == "__main__":
    print("error: `python -m proofs_check` moved to `python -m experiments.bounds` (the same options); "
          "see `python -m experiments.bounds --help`", file=sys.stderr)
    sys.exit(2)
