"""`python -m supervisor.batchd`: the same as the console script."""

import sys

from supervisor.batchd import main

sys.exit(main())
