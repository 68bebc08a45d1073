"""`python -m supervisor.reaper [-c CONFIG]`: run the reaper worker alone (debugging)."""

import sys

from supervisor.reaper import NAME, main
from supervisor.runtime import run_standalone

sys.exit(run_standalone(NAME, main))
