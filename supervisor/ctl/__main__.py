"""`python -m supervisor.ctl`: the same as the console script."""

import sys

from supervisor.ctl import main

sys.exit(main())
