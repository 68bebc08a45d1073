"""Process-level tests: real subprocesses, real signals (a package so names may repeat tests/)."""
