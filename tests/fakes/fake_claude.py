"""A fake `claude -p --output-format stream-json --verbose`: Claude Code's event stream."""

from __future__ import annotations

import sys

from _fakecommon import emit, finish, hang, record

SESSION = "3f9f74a6-6b7c-4a3e-9e1d-2f1f0a9b8c7d"

record()
emit({"type": "system", "subtype": "init", "session_id": SESSION, "model": "claude-sonnet-4-5",
      "cwd": "/ws", "tools": ["Bash", "Read"], "permissionMode": "bypassPermissions"})
hang()
emit({"type": "assistant", "session_id": SESSION, "message": {
    "id": "msg_01", "role": "assistant", "content": [
        {"type": "text", "text": "I will list the files."},
        {"type": "tool_use", "id": "toolu_01", "name": "Bash",
         "input": {"command": "ls -la", "description": "List files"}}]}})
emit({"type": "user", "session_id": SESSION, "message": {"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "toolu_01", "is_error": False,
     "content": "\n".join(f"file{i}.txt" for i in range(12))}]}})
print("warning: a line on stderr", file=sys.stderr, flush=True)
emit({"type": "assistant", "session_id": SESSION, "message": {
    "id": "msg_02", "role": "assistant", "content": [
        {"type": "text", "text": "There are 12 files."}]}})
emit({"type": "result", "subtype": "success", "is_error": False, "duration_ms": 2345,
      "num_turns": 2, "result": "There are 12 files.", "session_id": SESSION,
      "total_cost_usd": 0.0123})
finish()
