#!/usr/bin/env python3
"""A stdlib-only mock of the model APIs the agent CLIs call (for `make test-agents`).

Brought in from the lab's mockllm.py (/work/lab/agents, with which the CLI versions of the
adaptors were verified), less its DNS logger: `make test-agents` runs in a network
namespace that has only a loopback interface, so no name resolves anyway.

Speaks just enough of:
  * Anthropic Messages API      POST /v1/messages (stream + non-stream),
                                POST /v1/messages/count_tokens, GET /v1/models
  * OpenAI Responses API        POST /v1/responses (stream + non-stream)
  * OpenAI Chat Completions     POST /v1/chat/completions (stream + non-stream)
  * OpenAI model listing        GET  /v1/models
  * Gemini API                  POST /v1beta/models/{m}:streamGenerateContent[?alt=sse]
                                POST /v1beta/models/{m}:generateContent
                                POST /v1beta/models/{m}:countTokens
                                GET  /v1beta/models

Every request (method, path, query, headers, body text) is appended as one JSON
line to the log file (--log).  Reply text is deterministic:
    "MOCK-REPLY: " + first 40 chars of the last user message text
Usage is fixed: input 11, output 7 tokens.

Error mode (answer every model call with the provider's real 401 error shape):
  * a URL path prefix:   base URL http://127.0.0.1:PORT/401/...  (prefix stripped)
  * a control file:      --mode-file F  (re-read on each request; content "401" or "ok")
  * runtime endpoint:    POST /__mock/mode  with body "401" / "ok"
  * start-up default:    --mode 401  or env MOCK_MODE=401
Other modes: "429", "500" (rate limit / server error shapes), "hang" (never answers).

Usage:  python3 mockllm.py --log req.jsonl [--port 0] [--port-file F] [--mode ok]
Prints "MOCKLLM_PORT=<port>" on stdout once listening.
"""

import argparse
import base64
import gzip
import json
import os
import re
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

IN_TOK = 11
OUT_TOK = 7
LOCK = threading.Lock()
STATE = {"mode": "ok", "mode_file": None, "log": None, "n": 0}
MODES = ("ok", "401", "429", "500", "hang")


def current_mode():
    mf = STATE["mode_file"]
    if mf and os.path.exists(mf):
        try:
            with open(mf, encoding="utf-8") as f:
                m = f.read().strip()
        except OSError:
            m = ""
        if m in MODES:
            return m
    return STATE["mode"]


# ---------------------------------------------------------------- text helpers
def _texts_from_content(content):
    """Return list of text strings in an Anthropic/OpenAI content value."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    out = []
    if isinstance(content, list):
        for b in content:
            if isinstance(b, str):
                out.append(b)
            elif (isinstance(b, dict) and b.get("type") in ("text", "input_text", "output_text")
                  and isinstance(b.get("text"), str)):
                out.append(b["text"])
    return out


def _pick_user_text(texts):
    """Prefer the last text that is not a harness-injected reminder."""
    for t in reversed(texts):
        s = t.strip()
        if (
            s
            and not s.startswith("<system-reminder>")
            and not s.startswith("<environment_context>")
            and not s.startswith("<user_instructions>")
            and not s.startswith("# AGENTS.md")
            and not s.startswith("<permissions instructions>")
        ):
            return t
    return texts[-1] if texts else ""


def last_user_text(kind, body):
    try:
        if kind in ("anthropic", "chat"):
            msgs = body.get("messages") or []
            for m in reversed(msgs):
                if m.get("role") == "user":
                    t = _texts_from_content(m.get("content"))
                    if t:
                        return _pick_user_text(t)
        elif kind == "responses":
            inp = body.get("input")
            if isinstance(inp, str):
                return inp
            for item in reversed(inp or []):
                if isinstance(item, dict) and item.get("role") == "user":
                    t = _texts_from_content(item.get("content"))
                    if t:
                        return _pick_user_text(t)
        elif kind == "gemini":
            for c in reversed(body.get("contents") or []):
                if c.get("role", "user") == "user":
                    t = [
                        p["text"]
                        for p in c.get("parts", [])
                        if isinstance(p, dict) and isinstance(p.get("text"), str)
                    ]
                    if t:
                        return _pick_user_text(t)
    except Exception:  # noqa: BLE001 - mock must never crash
        return ""
    return ""


def reply_text(kind, body):
    return "MOCK-REPLY: " + last_user_text(kind, body)[:40]


def schema_fill(schema, name=""):
    """Build a minimal value satisfying a JSON schema (for structured-output calls)."""
    if not isinstance(schema, dict):
        return "mock"
    t = schema.get("type")
    if isinstance(t, list):
        t = t[0]
    t = (t or "").lower()
    if schema.get("enum"):
        if name == "next_speaker" and "user" in schema["enum"]:
            return "user"
        return schema["enum"][0]
    if t == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: schema_fill(v, k) for k, v in props.items()}
    if t == "array":
        return []
    if t in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 1))
        return lo if isinstance(lo, (int, float)) else 1
    if t == "boolean":
        return False
    if name == "next_speaker":
        return "user"
    return "mock"


# ---------------------------------------------------------------- error shapes
def error_payload(provider, mode):
    if mode == "401":
        if provider == "anthropic":
            return 401, {
                "type": "error",
                "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                "request_id": "req_mock401",
            }
        if provider == "gemini":
            return 401, {
                "error": {
                    "code": 401,
                    "message": (
                        "Request had invalid authentication credentials. Expected OAuth 2 "
                        "access token, login cookie or other valid authentication credential. "
                        "See https://developers.google.com/identity/sign-in/web/devconsole-project."
                    ),
                    "status": "UNAUTHENTICATED",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED",
                            "domain": "googleapis.com",
                            "metadata": {"service": "generativelanguage.googleapis.com"},
                        }
                    ],
                }
            }
        return 401, {
            "error": {
                "message": "Incorrect API key provided: sk-mock. You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    if mode == "429":
        if provider == "anthropic":
            return 429, {
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": "Number of request tokens has exceeded your per-minute rate limit",
                },
            }
        if provider == "gemini":
            return 429, {
                "error": {
                    "code": 429,
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "status": "RESOURCE_EXHAUSTED",
                }
            }
        return 429, {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    # 500
    if provider == "anthropic":
        return 500, {
            "type": "error",
            "error": {"type": "api_error", "message": "Internal server error"},
        }
    if provider == "gemini":
        return 500, {
            "error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}
        }
    return 500, {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


# ---------------------------------------------------------------- handler
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mockllm/1.0"

    def log_message(self, fmt, *args):  # quiet default stderr logging
        sys.stderr.write(f"mockllm: {self.command} {self.path}\n")

    # -- I/O helpers
    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline()
                size = int(line.strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n) if n else b""
        enc = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if enc == "gzip":
                data = gzip.decompress(data)
            elif enc == "deflate":
                data = zlib.decompress(data)
        except Exception:  # noqa: BLE001 - a body that does not inflate is logged as sent
            return data
        return data

    def _send_json(self, code, obj, extra_headers=None):
        raw = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("request-id", "req_mock")
        self.send_header("x-request-id", "req_mock")
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)
        self.wfile.flush()

    def _start_sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", "req_mock")
        self.send_header("x-request-id", "req_mock")
        self.end_headers()

    def _chunk(self, s):
        b = s.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
        self.wfile.flush()

    def _end_chunks(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _event(self, name, data):
        if name:
            self._chunk(f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n")
        else:
            self._chunk(f"data: {json.dumps(data, ensure_ascii=False)}\n\n")

    # -- logging
    def _log(self, path, query, raw, mode, note=""):
        try:
            text = raw.decode("utf-8")
            b64 = None
        except UnicodeDecodeError:
            text = None
            b64 = base64.b64encode(raw).decode()
        rec = {
            "ts": time.time(),
            "method": self.command,
            "path": path,
            "raw_path": self.path,
            "query": query,
            "mode": mode,
            "headers": dict(self.headers.items()),
            "body": text,
            "body_b64": b64,
            "note": note,
        }
        with LOCK:
            STATE["n"] += 1
            rec["seq"] = STATE["n"]
            if STATE["log"]:
                with open(STATE["log"], "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    # -- dispatch
    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def _handle(self):
        raw = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
        u = urlsplit(self.path)
        path = u.path
        query = parse_qs(u.query)
        mode = current_mode()
        m = re.match(r"^/(401|429|500|hang|ok)(/.*)$", path)
        if m:
            mode, path = m.group(1), m.group(2)
        self._log(path, query, raw, mode)

        if path == "/__mock/mode":
            newm = raw.decode().strip() if raw else ""
            if newm in MODES:
                STATE["mode"] = newm
            return self._send_json(200, {"mode": STATE["mode"]})
        if path in ("/", "/health", "/__mock/health"):
            return self._send_json(200, {"ok": True, "mode": mode})

        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}

        provider = self._provider(path)
        is_model_call = self.command == "POST" and (
            path.endswith("/messages")
            or path.endswith("/responses")
            or path.endswith("/chat/completions")
            or ":generateContent" in path
            or ":streamGenerateContent" in path
        )
        if mode == "hang" and is_model_call:
            time.sleep(3600)
            return
        if mode in ("401", "429", "500") and (
            is_model_call
            or path.endswith("/models")
            or "/models/" in path
            or path.endswith("count_tokens")
        ):
            code, payload = error_payload(provider, mode)
            return self._send_json(code, payload)

        if self.command == "POST" and path.endswith("/messages/count_tokens"):
            return self._send_json(200, {"input_tokens": IN_TOK})
        if self.command == "POST" and path.endswith("/messages"):
            return self._anthropic(body)
        if self.command == "POST" and path.endswith("/responses"):
            return self._responses(body)
        if self.command == "POST" and path.endswith("/chat/completions"):
            return self._chat(body)
        if ":streamGenerateContent" in path:
            return self._gemini(body, path, stream=True, sse=(query.get("alt") == ["sse"]))
        if ":generateContent" in path:
            return self._gemini(body, path, stream=False, sse=False)
        if ":countTokens" in path:
            return self._send_json(200, {"totalTokens": IN_TOK})
        if ":embedContent" in path:
            return self._send_json(200, {"embedding": {"values": [0.0] * 8}})
        if ":batchEmbedContents" in path:
            n = len(body.get("requests") or [1])
            return self._send_json(200, {"embeddings": [{"values": [0.0] * 8} for _ in range(n)]})
        if self.command == "GET" and path.endswith("/models"):
            return self._models(provider)
        if self.command == "GET" and "/models/" in path:
            mid = path.rsplit("/", 1)[-1]
            if provider == "gemini":
                return self._send_json(
                    200,
                    {
                        "name": "models/" + mid,
                        "displayName": mid,
                        "inputTokenLimit": 1048576,
                        "outputTokenLimit": 65536,
                        "supportedGenerationMethods": ["generateContent", "countTokens"],
                    },
                )
            return self._send_json(
                200,
                {
                    "id": mid,
                    "object": "model",
                    "type": "model",
                    "created": 1700000000,
                    "owned_by": "mock",
                    "display_name": mid,
                    "created_at": "2025-01-01T00:00:00Z",
                },
            )
        return self._send_json(
            404,
            {
                "error": {
                    "message": f"mockllm: no route for {self.command} {path}",
                    "type": "not_found",
                }
            },
        )

    def _provider(self, path):
        if (
            path.startswith("/v1beta")
            or path.startswith("/v1alpha")
            or ":" in path.rsplit("/", 1)[-1]
        ):
            return "gemini"
        if (
            path.endswith("/messages")
            or path.endswith("count_tokens")
            or "anthropic-version" in {k.lower() for k in self.headers}
            or self.headers.get("x-api-key")
        ):
            return "anthropic"
        return "openai"

    def _models(self, provider):
        if provider == "anthropic":
            ids = [
                "claude-sonnet-4-5-20250929",
                "claude-opus-4-1-20250805",
                "claude-haiku-4-5-20251001",
            ]
            data = [
                {"type": "model", "id": i, "display_name": i, "created_at": "2025-01-01T00:00:00Z"}
                for i in ids
            ]
            return self._send_json(
                200, {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}
            )
        if provider == "gemini":
            ids = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"]
            return self._send_json(
                200,
                {
                    "models": [
                        {
                            "name": "models/" + i,
                            "displayName": i,
                            "supportedGenerationMethods": ["generateContent", "countTokens"],
                        }
                        for i in ids
                    ]
                },
            )
        ids = ["mock-model", "gpt-5", "gpt-4o"]
        return self._send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"id": i, "object": "model", "created": 1700000000, "owned_by": "mock"}
                    for i in ids
                ],
            },
        )

    # -- Anthropic
    def _anthropic(self, body):
        model = body.get("model", "claude-mock")
        text = reply_text("anthropic", body)
        mid = "msg_mock_" + uuid.uuid4().hex[:12]
        usage = {
            "input_tokens": IN_TOK,
            "output_tokens": OUT_TOK,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if not body.get("stream"):
            return self._send_json(
                200,
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
        self._start_sse()
        self._event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": dict(usage, output_tokens=1),
                },
            },
        )
        self._event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        self._event("ping", {"type": "ping"})
        half = len(text) // 2
        for part in (text[:half], text[half:]):
            self._event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": part},
                },
            )
        self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": IN_TOK,
                    "output_tokens": OUT_TOK,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        )
        self._event("message_stop", {"type": "message_stop"})
        self._end_chunks()

    # -- OpenAI Responses
    def _responses(self, body):
        model = body.get("model", "mock-model")
        text = reply_text("responses", body)
        rid = "resp_mock_" + uuid.uuid4().hex[:12]
        iid = "msg_mock_" + uuid.uuid4().hex[:12]
        now = int(time.time())
        usage = {
            "input_tokens": IN_TOK,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": OUT_TOK,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": IN_TOK + OUT_TOK,
        }
        item = {
            "id": iid,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        base = {
            "id": rid,
            "object": "response",
            "created_at": now,
            "model": model,
            "output": [],
            "status": "in_progress",
            "usage": None,
        }
        if not body.get("stream"):
            return self._send_json(
                200, dict(base, status="completed", output=[item], usage=usage, output_text=text)
            )
        self._start_sse()
        seq = iter(range(1000))
        ev = lambda name, d: self._event(name, dict(d, type=name, sequence_number=next(seq)))  # noqa: E731
        ev("response.created", {"response": base})
        ev("response.in_progress", {"response": base})
        ev(
            "response.output_item.added",
            {"output_index": 0, "item": dict(item, status="in_progress", content=[])},
        )
        ev(
            "response.content_part.added",
            {
                "item_id": iid,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
        )
        ev(
            "response.output_text.delta",
            {"item_id": iid, "output_index": 0, "content_index": 0, "delta": text},
        )
        ev(
            "response.output_text.done",
            {"item_id": iid, "output_index": 0, "content_index": 0, "text": text},
        )
        ev(
            "response.content_part.done",
            {
                "item_id": iid,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []},
            },
        )
        ev("response.output_item.done", {"output_index": 0, "item": item})
        ev(
            "response.completed",
            {"response": dict(base, status="completed", output=[item], usage=usage)},
        )
        self._end_chunks()

    # -- OpenAI Chat Completions
    def _chat(self, body):
        model = body.get("model", "mock-model")
        text = reply_text("chat", body)
        cid = "chatcmpl-mock" + uuid.uuid4().hex[:12]
        now = int(time.time())
        usage = {
            "prompt_tokens": IN_TOK,
            "completion_tokens": OUT_TOK,
            "total_tokens": IN_TOK + OUT_TOK,
        }
        if not body.get("stream"):
            return self._send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": now,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                },
            )
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._start_sse()

        def mk(delta, fr=None, **kw):
            choice = {"index": 0, "delta": delta, "finish_reason": fr, "logprobs": None}
            return {"id": cid, "object": "chat.completion.chunk", "created": now,
                    "model": model, "choices": [choice], **kw}

        self._event(None, mk({"role": "assistant", "content": ""}))
        half = len(text) // 2
        for part in (text[:half], text[half:]):
            self._event(None, mk({"content": part}))
        if want_usage:
            self._event(None, mk({}, "stop"))
            self._event(
                None,
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": now,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                },
            )
        else:
            self._event(None, mk({}, "stop", usage=usage))
        self._chunk("data: [DONE]\n\n")
        self._end_chunks()

    # -- Gemini
    def _gemini(self, body, path, stream, sse):
        model = path.split("/models/", 1)[-1].split(":", 1)[0]
        gc = body.get("generationConfig") or body.get("config") or {}
        schema = gc.get("responseJsonSchema") or gc.get("responseSchema")
        if schema or gc.get("responseMimeType") == "application/json":
            text = json.dumps(schema_fill(schema or {"type": "object"}))
        else:
            text = reply_text("gemini", body)
        usage = {
            "promptTokenCount": IN_TOK,
            "candidatesTokenCount": OUT_TOK,
            "totalTokenCount": IN_TOK + OUT_TOK,
        }
        rid = "mockresp" + uuid.uuid4().hex[:10]
        full = {
            "candidates": [
                {
                    "content": {"parts": [{"text": text}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": rid,
        }
        if not stream:
            return self._send_json(200, full)
        half = len(text) // 2
        c1 = {
            "candidates": [
                {"content": {"parts": [{"text": text[:half]}], "role": "model"}, "index": 0}
            ],
            "usageMetadata": {"promptTokenCount": IN_TOK, "totalTokenCount": IN_TOK},
            "modelVersion": model,
            "responseId": rid,
        }
        c2 = {
            "candidates": [
                {
                    "content": {"parts": [{"text": text[half:]}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": rid,
        }
        if not sse:  # JSON array stream
            return self._send_json(200, [c1, c2])
        self._start_sse()
        self._chunk(f"data: {json.dumps(c1, ensure_ascii=False)}\r\n\r\n")
        self._chunk(f"data: {json.dumps(c2, ensure_ascii=False)}\r\n\r\n")
        self._end_chunks()


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", default="mockllm-requests.jsonl")
    ap.add_argument("--port-file")
    ap.add_argument("--mode", default=os.environ.get("MOCK_MODE", "ok"), choices=MODES)
    ap.add_argument("--mode-file", default=os.environ.get("MOCK_MODE_FILE"))
    a = ap.parse_args()
    STATE.update(mode=a.mode, mode_file=a.mode_file, log=a.log)
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    port = srv.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(a.port_file + ".tmp", a.port_file)
    print(f"MOCKLLM_PORT={port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
