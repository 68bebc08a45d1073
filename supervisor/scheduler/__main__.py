"""`python -m supervisor.scheduler [-c CONFIG]`: run the scheduler worker alone (debugging)."""

import sys

from supervisor.runtime import run_standalone
from supervisor.scheduler import NAME, main

sys.exit(run_standalone(NAME, main))
