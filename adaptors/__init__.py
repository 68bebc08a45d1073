"""batchd's adaptors: one module per agent CLI, plus the shared adaptor runtime."""

__all__: list[str] = []
