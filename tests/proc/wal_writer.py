"""A writer for tests/proc/test_wal_kill.py: enqueue forever into the queue at argv[1],
printing each id (flushed) only after enqueue returned, i.e. once it is acknowledged.

Every 7th step is an enqueue_many of three jobs (printed after it returns) so batches are
killed too. Ids continue from the number of jobs recovered, so they stay unique and
increasing across kills. A small compaction threshold makes kills land in compactions.
"""

from __future__ import annotations

import sys

from supervisor.state.queue import JobQueue
from supervisor.state.wal import Wal


def main() -> None:
    queue = JobQueue.over(Wal.open(sys.argv[1], compact_records=int(sys.argv[2])))
    n = len(queue)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    while True:
        if n % 7 == 0:
            batch = [f"k{n + i:08d}" for i in range(3)]
            queue.enqueue_many([(j, {"n": j}) for j in batch])
            out.write("\n".join(batch) + "\n")
            n += 3
        else:
            job = f"k{n:08d}"
            queue.enqueue(job, {"n": job})
            out.write(job + "\n")
            n += 1
        out.flush()


if __name__ == "__main__":
    main()
