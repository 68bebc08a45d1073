"""`python -m bench.chaos`: the chaos suite (see bench.chaos)."""

import sys

from bench.chaos import main

sys.exit(main())
