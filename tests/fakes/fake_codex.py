"""A fake `codex exec --json`: Codex's thread/turn/item JSONL events."""

from __future__ import annotations

from _fakecommon import emit, finish, hang, record

THREAD = "67e55044-10b1-426f-9247-bb680e5fe0c8"

record()
emit({"type": "thread.started", "thread_id": THREAD})
hang()
emit({"type": "turn.started"})
emit({"type": "item.completed", "item": {"id": "item_0", "type": "reasoning",
                                         "text": "**Listing files**"}})
emit({"type": "item.started", "item": {"id": "item_1", "type": "command_execution",
                                       "command": "bash -lc ls", "aggregated_output": "",
                                       "exit_code": None, "status": "in_progress"}})
emit({"type": "item.completed", "item": {"id": "item_1", "type": "command_execution",
                                         "command": "bash -lc ls",
                                         "aggregated_output": "a.txt\nb.txt\n",
                                         "exit_code": 0, "status": "completed"}})
emit({"type": "item.completed", "item": {"id": "item_2", "type": "file_change",
                                         "changes": [{"path": "a.txt", "kind": "update"}],
                                         "status": "completed"}})
emit({"type": "item.completed", "item": {"id": "item_3", "type": "agent_message",
                                         "text": "Updated a.txt."}})
emit({"type": "turn.completed", "usage": {"input_tokens": 1200, "cached_input_tokens": 200,
                                          "output_tokens": 345}})
finish()
