"""The OpenAPI 3.1 document of the api (served at GET /v1/openapi.json).

Written as data next to the routes it describes; tests/api/test_openapi.py checks that
every route of supervisor.api.app is here and nothing else is, that the document is valid
OpenAPI 3.1, and validates real responses of a running api against these schemas.
"""

from __future__ import annotations

from typing import Any

from supervisor.state.jobs import RECORD_FIELDS
from supervisor.state.queue import JOB_STATES

__all__ = ["DOCUMENT"]


def _nullable(kind: str | list[str]) -> dict[str, Any]:
    kinds = [kind] if isinstance(kind, str) else list(kind)
    return {"type": [*kinds, "null"]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_STATE = {"type": "string", "enum": list(JOB_STATES)}

#: Job control's keys, in a submission and in a record alike.
_CONTROL: dict[str, Any] = {
    "after": {"type": "array", "items": {"type": "string"}},
    "after_any": {"type": "array", "items": {"type": "string"}},
    "priority": {"type": "integer"},
    "not_before": _nullable("string"),
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "retries": {"type": "integer"},
}

#: One repository's entry in a job's `changes` (CONTRACT.md, "Results").
_REPO_CHANGES: dict[str, Any] = {
    "type": "object",
    "required": ["base", "head", "files", "insertions", "deletions", "branch"],
    "properties": {
        "base": _nullable("string"), "head": _nullable("string"),
        "files": _nullable("integer"), "insertions": _nullable("integer"),
        "deletions": _nullable("integer"), "branch": _nullable("string"),
        "commits": _nullable("integer"),
    },
}

_JOB_PROPS: dict[str, Any] = {
    "id": {"type": "string"},
    "state": _STATE,
    "agent": {"type": "string"},
    "repos": {"type": "array", "items": {"type": "string"}},
    "batch": _nullable("string"),
    "created_at": _nullable("string"),
    "started_at": _nullable("string"),
    "finished_at": _nullable("string"),
    "exit_code": _nullable("integer"),
    "reason": _nullable("string"),
    "attempts": {"type": "integer"},
    "pid": _nullable("integer"),
    "workspace": _nullable("string"),
    "output_path": {"type": "string"},
    "callback": _nullable("string"),
    "timeout": _nullable("number"),
    "exclusive": {"type": "boolean"},
    **_CONTROL,
    "retry_of": _nullable("string"),
    "push": _nullable("string"),
    "changes": {"type": ["object", "null"], "additionalProperties": _REPO_CHANGES},
}

_SUBMIT_JOB: dict[str, Any] = {
    "type": "object",
    "description": "One job, with the keys of a `batchctl submit --from` line.",
    "required": ["agent", "prompt"],
    "additionalProperties": False,
    "properties": {
        "agent": {"type": "string"},
        "prompt": {"type": "string"},
        "repos": {"type": "array", "items": {"type": "string"}},
        "callback": _nullable("string"),
        "timeout": _nullable(["number", "string"]),
        "batch": _nullable("string"),
        "id": _nullable("string"),
        "exclusive": {"type": "boolean"},
        **_CONTROL,
        "push": {"type": ["boolean", "string", "null"],
                 "description": "true: push a completed job's changes to batchd/<id>; "
                                "a string: to that branch"},
    },
}

_WORKER: dict[str, Any] = {
    "type": "object",
    "required": ["name", "state", "pid", "since", "restarts"],
    "properties": {
        "name": {"type": "string"},
        "state": {"type": "string", "enum": ["STARTING", "RUNNING", "BACKOFF", "STOPPING",
                                             "STOPPED", "EXITED", "FATAL"]},
        "pid": _nullable("integer"),
        "since": _nullable("string"),
        "restarts": {"type": "integer"},
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "Job": {"type": "object", "required": list(RECORD_FIELDS), "properties": _JOB_PROPS},
    "SubmitJob": _SUBMIT_JOB,
    "Submission": {"oneOf": [
        _ref("SubmitJob"),
        {"type": "object", "required": ["jobs"], "additionalProperties": False,
         "properties": {"jobs": {"type": "array", "minItems": 1,
                                 "items": _ref("SubmitJob")}}}]},
    "Ids": {"type": "object", "required": ["ids"],
            "properties": {"ids": {"type": "array", "items": {"type": "string"}}}},
    "JobPage": {"type": "object", "required": ["jobs", "next_cursor"], "properties": {
        "jobs": {"type": "array", "items": _ref("Job")},
        "next_cursor": _nullable("string")}},
    "CancelResult": {"type": "object", "required": ["job", "state", "requested", "request"],
                     "properties": {"job": {"type": "string"}, "state": _STATE,
                                    "requested": {"type": "boolean"},
                                    "request": _nullable("string")}},
    "Worker": _WORKER,
    "Status": {"type": "object", "required": ["batchd", "workers", "jobs", "degraded",
                                              "paused"], "properties": {
        "batchd": {"type": "object", "required": ["running", "pid"], "properties": {
            "running": {"type": "boolean"}, "pid": _nullable("integer")}},
        "workers": {"type": "array", "items": _ref("Worker")},
        "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
        "degraded": {"type": "array", "items": {"type": "string"}},
        "paused": {"type": "boolean"}}},
    "Locks": {"type": "object", "required": ["held", "waiting", "unavailable"], "properties": {
        "held": {"type": "array", "items": {
            "type": "object", "required": ["repo", "job", "since"],
            "properties": {"repo": {"type": "string"}, "job": {"type": "string"},
                           "since": _nullable("string")}}},
        "waiting": {"type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "unavailable": {"type": "array", "items": {"type": "string"}}}},
    "Delivery": {"type": "object", "required": ["id", "job", "url", "state", "attempts",
                                                "next_attempt_at", "last_error"],
                 "properties": {
                     "id": {"type": "string"}, "job": _nullable("string"),
                     "url": _nullable("string"),
                     "state": {"type": "string",
                               "enum": ["pending", "in_flight", "delivered", "failed"]},
                     "attempts": {"type": "integer"},
                     "next_attempt_at": _nullable("string"),
                     "last_error": _nullable(["string", "integer"]),
                     "created_at": _nullable("string")}},
    "Batch": {"type": "object", "required": ["batch", "counts", "done", "jobs"], "properties": {
        "batch": {"type": "string"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "done": {"type": "boolean"},
        "jobs": {"type": "array", "items": {"type": "string"}}}},
    "Stats": {"type": "object", "required": ["submitted", "completed", "failed", "cancelled",
                                             "timed_out", "lost", "recovered", "restarts"],
              "properties": {
                  **{k: {"type": "integer"} for k in ("submitted", "completed", "failed",
                                                      "cancelled", "timed_out", "lost",
                                                      "recovered")},
                  "restarts": {"type": "object",
                               "additionalProperties": {"type": "integer"}},
                  "reaped": {"type": "object",
                             "additionalProperties": {"type": "integer"}}}},
    "Agent": {"type": "object", "required": ["name", "adaptor", "command", "version", "found",
                                             "user", "max_concurrent"], "properties": {
        "name": {"type": "string"}, "adaptor": {"type": "string"},
        "command": _nullable("string"), "version": _nullable("string"),
        "found": {"type": "boolean"}, "user": _nullable("string"),
        "max_concurrent": _nullable("integer")}},
    "Paused": {"type": "object", "required": ["paused"], "properties": {
        "paused": {"type": "boolean"}}},
    "Retried": {"type": "object", "required": ["id", "retry_of"], "properties": {
        "id": {"type": "string"}, "retry_of": {"type": "string"}}},
    "Token": {"type": "object", "required": ["name", "scope"], "properties": {
        "name": {"type": "string"},
        "scope": {"type": "string", "enum": ["read", "submit", "admin"]}}},
    "ControlReply": {"type": "object", "required": ["id", "ok", "message"], "properties": {
        "id": {"type": "string"}, "ok": {"type": "boolean"},
        "message": _nullable("string"), "result": {}}},
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_COMMON = {"400": _error("bad parameter"), "401": _error("no valid token"),
           "403": _error("the token's scope is too short"),
           "503": _error("state that cannot be read or written (a full or failing disk), "
                         "or batchd not running")}
_JOB_ID = {"name": "id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}}


def _op(summary: str, scope: str, responses: dict[str, Any], *,
        parameters: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "description": f"Scope: `{scope}`.",
                          "security": [{"bearer": []}], "responses": {**_COMMON, **responses}}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "get": _op("List jobs in submission order (paginated)", "read",
                   {"200": _json(_ref("JobPage"))}, parameters=[
                       _query("state", _STATE, "only jobs in this state"),
                       _query("batch", {"type": "string"}, "only jobs of this batch"),
                       _query("agent", {"type": "string"}, "only jobs of this agent"),
                       _query("label", {"type": "string"}, "K=V; repeatable, all must match"),
                       _query("since", {"type": "string"},
                              "submitted since: ISO-8601, or a duration ago (2h)"),
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                              "page size (default 100)"),
                       _query("cursor", {"type": "string"}, "next_cursor of the last page"),
                       _query("order", {"type": "string", "enum": ["asc", "desc"]},
                              "asc: oldest first (batchctl's order), desc: newest first")]),
        "post": _op("Submit one job, or {jobs: [...]} (all or nothing), durably", "submit",
                    {"201": _json(_ref("Ids"), "accepted and durable (a replay of the same "
                                               "ids and jobs answers the same)"),
                     "409": _error("an id is in use by another job"),
                     "413": _error("body over the limit"),
                     "422": _error("a job the validator refuses (the message names it)"),
                     "503": _error("nothing was queued: the job queue cannot be read, free "
                                   "space is below disk.min_free, or the request could not "
                                   "be written (code storage)")},
                    body=_ref("Submission")),
    },
    "/v1/jobs/{id}": {"get": _op("One job's record", "read", {
        "200": _json(_ref("Job")), "404": _error("no such job")}, parameters=[_JOB_ID])},
    "/v1/jobs/{id}/cancel": {"post": _op("Cancel a job", "submit", {
        "200": _json(_ref("CancelResult"), "already terminal: nothing to do"),
        "202": _json(_ref("CancelResult"), "cancel requested (durable)"),
        "404": _error("no such job")}, parameters=[_JOB_ID])},
    "/v1/jobs/{id}/retry": {"post": _op("Submit a new job with this job's spec", "submit", {
        "201": _json(_ref("Retried"), "the new job's id (as `batchctl retry --json`)"),
        "404": _error("no such job"), "409": _error("the job has not ended"),
        "422": _error("its spec is refused today (e.g. its agent is gone)")},
        parameters=[_JOB_ID])},
    "/v1/jobs/{id}/diff": {"get": _op("The job's changes as one patch (empty when none)",
                                      "read", {
        "200": {"description": "the patch",
                "content": {"text/x-diff": {"schema": {"type": "string"}}}},
        "404": _error("no such job")}, parameters=[_JOB_ID])},
    "/v1/jobs/{id}/output": {"get": _op(
        "The job's output from a byte offset; with Accept: text/event-stream, follow it",
        "read", {
            "200": {"description": "bytes from `offset` to the end as it is now (header "
                                   "X-Batchd-Offset: where to go on); or an event stream: "
                                   "`output` events (data: a JSON string, id: the byte "
                                   "offset after it), then `end` (data: {state, offset}) "
                                   "once the job is terminal. Reconnect with Last-Event-ID.",
                    "content": {"application/octet-stream": {"schema": {"type": "string"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            "404": _error("no such job")},
        parameters=[_JOB_ID, _query("offset", {"type": "integer", "minimum": 0},
                                    "first byte (default 0; Last-Event-ID wins)")])},
    "/v1/status": {"get": _op("`batchctl status --json`", "read",
                              {"200": _json(_ref("Status"))})},
    "/v1/workers": {"get": _op("`batchctl workers --json`", "read",
                               {"200": _json({"type": "array", "items": _ref("Worker")})})},
    "/v1/locks": {"get": _op("`batchctl locks --json`", "read", {"200": _json(_ref("Locks"))})},
    "/v1/callbacks": {"get": _op("`batchctl callbacks --json`", "read", {
        "200": _json({"type": "array", "items": _ref("Delivery")})})},
    "/v1/batches": {"get": _op("`batchctl batches --json`", "read", {
        "200": _json({"type": "array", "items": _ref("Batch")})})},
    "/v1/batches/{batch}": {"get": _op("`batchctl batch B --json`", "read", {
        "200": _json(_ref("Batch")), "404": _error("no such batch")}, parameters=[
            {"name": "batch", "in": "path", "required": True, "schema": {"type": "string"}}])},
    "/v1/stats": {"get": _op("`batchctl stats --json`", "read", {"200": _json(_ref("Stats"))})},
    "/v1/agents": {"get": _op("`batchctl agents --json`", "read", {
        "200": _json({"type": "array", "items": _ref("Agent")})})},
    "/v1/pause": {"post": _op("Stop starting new jobs (running ones go on)", "admin", {
        "202": _json(_ref("Paused"), "requested (durable)")})},
    "/v1/resume": {"post": _op("Start queued jobs again", "admin", {
        "202": _json(_ref("Paused"), "requested (durable)")})},
    "/v1/workers/{worker}/restart": {"post": _op("`batchctl restart W`", "admin", {
        "200": _json(_ref("ControlReply")),
        "202": _json(_ref("ControlReply"), "the api restarting itself: requested"),
        "404": _error("no such worker"), "409": _error("batchd refused or it failed")},
        parameters=[{"name": "worker", "in": "path", "required": True,
                     "schema": {"type": "string"}}])},
    "/v1/token": {"get": _op("The presented token's name and scope (the dashboard asks)",
                             "read", {"200": _json(_ref("Token"))})},
    "/v1/openapi.json": {"get": _op("This document", "read", {
        "200": _json({"type": "object"})})},
    "/metrics": {"get": _op("Prometheus metrics (text format)", "read", {
        "200": {"description": "the exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}}}})},
    "/": {"get": {"summary": "The web dashboard (it asks for a token once per session)",
                  "security": [], "responses": {"200": {
                      "description": "HTML", "content": {"text/html": {
                          "schema": {"type": "string"}}}}}}},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "batchd", "version": "1",
             "description": "batchd's HTTP API: a front door to the same files and checks "
                            "as batchctl. Every request carries Authorization: Bearer TOKEN "
                            "(`batchctl token add NAME --scope read|submit|admin`). Errors "
                            "are {\"error\": {\"code\", \"message\"}}."},
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
}
