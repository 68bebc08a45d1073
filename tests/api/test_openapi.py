"""The OpenAPI document: valid OpenAPI 3.1, the same routes as the app, and real responses of a
running api (with batchd) that validate against its schemas."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from supervisor.api.app import routes
from supervisor.api.openapi import DOCUMENT
from supervisor.state.layout import Layout
from tests.helpers import until
from tests.httpkit import Client, api_address, config_text, make_tokens


def test_the_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts it as 3.1."""
    assert "3.1.0" == DOCUMENT["openapi"]
    validate(DOCUMENT)


def _app_routes() -> set[tuple[str, str]]:
    out = set()
    for r in routes():
        if isinstance(r, Mount):
            continue
        assert isinstance(r, Route)
        for method in r.methods or ():
            if method != "HEAD":
                out.add((method.lower(), r.path))
    return out


def test_every_route_is_documented_and_nothing_else() -> None:
    """(method, path) of the app's routes == those of the document."""
    documented = {(m, p) for p, ops in DOCUMENT["paths"].items() for m in ops}
    assert _app_routes() == documented


def _schema(path: str, method: str, status: int, content: str = "application/json"
            ) -> dict[str, Any]:
    op = DOCUMENT["paths"][path][method]
    resp = op["responses"][str(status)]
    return {**resp["content"][content]["schema"], "components": DOCUMENT["components"]}


def _check(body: Any, path: str, method: str, status: int) -> None:
    OAS31Validator(_schema(path, method, status)).validate(body)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    root = tmp_path_factory.mktemp("oas")
    cfg = root / "batchd.yaml"
    cfg.write_text(config_text(root / "state"))
    tokens = make_tokens(cfg)
    layout = Layout(root / "state")
    with open(root / "batchd.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.batchd", "-c", str(cfg)],
                                stdout=log, stderr=log)
    try:
        address = until("the api ready", lambda: api_address(layout))
        yield Client(address, tokens["admin"]), root
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_real_responses_validate_against_the_document(running: tuple[Client, Path]) -> None:
    """Each route's real answer (success and errors) fits the schema documented for it."""
    c, _ = running
    status, ids = c.json("POST", "/v1/jobs", {"agent": "shell", "prompt": "echo ok",
                                              "batch": "oas", "id": "oas-1"})
    _check(ids, "/v1/jobs", "post", status)
    until("oas-1 completed", lambda: c.json("GET", "/v1/jobs/oas-1")[1]["state"] == "completed")
    for path, template in (("/v1/jobs?limit=5", "/v1/jobs"), ("/v1/jobs/oas-1", "/v1/jobs/{id}"),
                           ("/v1/status", "/v1/status"), ("/v1/workers", "/v1/workers"),
                           ("/v1/locks", "/v1/locks"), ("/v1/callbacks", "/v1/callbacks"),
                           ("/v1/batches", "/v1/batches"),
                           ("/v1/batches/oas", "/v1/batches/{batch}"),
                           ("/v1/stats", "/v1/stats"), ("/v1/token", "/v1/token"),
                           ("/v1/openapi.json", "/v1/openapi.json")):
        status, body = c.json("GET", path)
        assert 200 == status, (path, body)
        _check(body, template, "get", 200)
    status, body = c.json("POST", "/v1/jobs/oas-1/cancel")
    _check(body, "/v1/jobs/{id}/cancel", "post", status)
    status, body = c.json("POST", "/v1/jobs/oas-1/retry")
    _check(body, "/v1/jobs/{id}/retry", "post", status)
    for path in ("/v1/pause", "/v1/resume"):
        status, body = c.json("POST", path)
        _check(body, path, "post", status)
    status, body = c.json("POST", "/v1/workers/reaper/restart")
    assert 200 == status, body
    _check(body, "/v1/workers/{worker}/restart", "post", status)
    for method, path, template, payload in (
            ("GET", "/v1/jobs/ghost", "/v1/jobs/{id}", None),
            ("POST", "/v1/jobs", "/v1/jobs", {"agent": "x"}),
            ("GET", "/v1/jobs?limit=0", "/v1/jobs", None),
            ("GET", "/v1/agents", "/v1/agents", None)):
        status, body = c.json(method, path, payload)
        _check(body, template, method.lower(), status)
    status, body = c.json("GET", "/v1/status", token=None)
    _check(body, "/v1/status", "get", status)


def test_documented_errors_are_the_contracts() -> None:
    """Every error status documented is one of CONTRACT.md's (or 404/405 for routes)."""
    statuses = {s for ops in DOCUMENT["paths"].values() for op in ops.values()
                for s in op["responses"] if re.fullmatch(r"[45]\d\d", s)}
    assert statuses <= {"400", "401", "403", "404", "409", "413", "422", "503"}
