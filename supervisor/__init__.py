"""batchd: a crash-resilient batch-job supervisor (the `supervisor` import package)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
