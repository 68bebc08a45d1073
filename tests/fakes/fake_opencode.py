"""A fake `opencode run --format json`: opencode's step/text/tool_use JSONL events."""

from __future__ import annotations

from _fakecommon import emit, finish, hang, record

SESSION = "ses_494719016ffe85dkDMj0FPRbHK"
TS = 1767036059338

record()
emit({"type": "step_start", "timestamp": TS, "sessionID": SESSION,
      "part": {"id": "prt_1", "sessionID": SESSION, "messageID": "msg_1", "type": "step-start",
               "snapshot": "46358aa5"}})
hang()
emit({"type": "tool_use", "timestamp": TS, "sessionID": SESSION,
      "part": {"id": "prt_2", "sessionID": SESSION, "messageID": "msg_1", "type": "tool",
               "callID": "call_1", "tool": "bash",
               "state": {"status": "completed", "input": {"command": "ls"},
                         "output": "a.txt\nb.txt\n", "title": "ls",
                         "metadata": {"exit": 0}}}})
emit({"type": "step_finish", "timestamp": TS, "sessionID": SESSION,
      "part": {"id": "prt_3", "type": "step-finish", "reason": "tool-calls",
               "tokens": {"input": 10, "output": 5}, "cost": 0}})
emit({"type": "text", "timestamp": TS, "sessionID": SESSION,
      "part": {"id": "prt_4", "sessionID": SESSION, "messageID": "msg_2", "type": "text",
               "text": "Two files: a.txt and b.txt."}})
emit({"type": "step_finish", "timestamp": TS, "sessionID": SESSION,
      "part": {"id": "prt_5", "type": "step-finish", "reason": "stop",
               "tokens": {"input": 120, "output": 30}, "cost": 0.0021}})
finish()
