"""A fake `gemini --prompt=... --output-format stream-json`: Gemini CLI's JSONL events."""

from __future__ import annotations

from _fakecommon import emit, finish, hang, record

SESSION = "c0ffee00-1234-4abc-9def-000000000001"
TS = "2026-11-28T11:45:02.123Z"

record()
emit({"type": "init", "timestamp": TS, "session_id": SESSION, "model": "gemini-2.5-pro"})
hang()
emit({"type": "message", "timestamp": TS, "role": "user", "content": "list the files"})
emit({"type": "message", "timestamp": TS, "role": "assistant", "content": "Listing ",
      "delta": True})
emit({"type": "message", "timestamp": TS, "role": "assistant", "content": "the files.",
      "delta": True})
emit({"type": "tool_use", "timestamp": TS, "tool_name": "run_shell_command", "tool_id": "t1",
      "parameters": {"command": "ls -la", "description": "list"}})
emit({"type": "tool_result", "timestamp": TS, "tool_id": "t1", "status": "success",
      "output": "a.txt\nb.txt"})
emit({"type": "tool_use", "timestamp": TS, "tool_name": "read_file", "tool_id": "t2",
      "parameters": {"absolute_path": "/ws/missing.txt"}})
emit({"type": "tool_result", "timestamp": TS, "tool_id": "t2", "status": "error",
      "output": "", "error": {"type": "file_not_found", "message": "no such file"}})
emit({"type": "error", "timestamp": TS, "severity": "warning", "message": "loop detected"})
emit({"type": "message", "timestamp": TS, "role": "assistant", "content": "Two files.",
      "delta": True})
emit({"type": "result", "timestamp": TS, "status": "success",
      "stats": {"total_tokens": 321, "input_tokens": 300, "output_tokens": 21,
                "duration_ms": 1500, "tool_calls": 2}})
finish()
