"""`python -m supervisor.api [-c CONFIG]`: the api worker alone, in the foreground."""

from __future__ import annotations

import sys

from supervisor.api import NAME, main
from supervisor.runtime import run_standalone

sys.exit(run_standalone(NAME, main))
