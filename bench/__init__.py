"""batchd's benchmark scripts (`python -m bench.<name> --json`); not part of the package."""
