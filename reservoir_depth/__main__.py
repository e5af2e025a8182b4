"""python -m reservoir_depth: the reservoir-depth command (also under torchrun)."""

import sys

from .cli import main

sys.exit(main())
