"""`python -m supervisor.callbacks [-c CONFIG]`: run the callbacks worker alone (debugging)."""

import sys

from supervisor.callbacks import NAME, main
from supervisor.runtime import run_standalone

sys.exit(run_standalone(NAME, main))
