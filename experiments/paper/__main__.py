import sys

from experiments.paper.cli import main

sys.exit(main())
