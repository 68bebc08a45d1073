"""A fake `aider --message ...`: plain text on stdout and stderr."""

from __future__ import annotations

import sys

from _fakecommon import finish, hang, record

record()
sys.stdout.write("Aider v0.86.0\nModel: fake-model\n")
sys.stdout.flush()
hang()
sys.stderr.write("Can't initialize prompt toolkit: no terminal\n")
sys.stderr.flush()
sys.stdout.write("Applied edit to hello.js\nCommit 1a2b3c4 add hello\n")
finish()
