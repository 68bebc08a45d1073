"""A fake `q chat --no-interactive`: plain text on stdout and stderr."""

from __future__ import annotations

import sys

from _fakecommon import finish, hang, record

record()
sys.stderr.write("Using tool: execute_bash\n")
sys.stderr.flush()
hang()
sys.stdout.write("> The workspace has 2 files.\n")
finish()
