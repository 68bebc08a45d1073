"""The OpenAPI 3.1 document of the api (served at GET /v1/openapi.json)."""

from __future__ import annotations

from typing import Any

__all__ = ["DOCUMENT"]

DOCUMENT: dict[str, Any] = {"openapi": "3.1.0", "info": {"title": "batchd", "version": "1"},
                            "paths": {}}
