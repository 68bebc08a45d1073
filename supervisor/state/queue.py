"""The job queue: jobs, their states and fields, FIFO order and counters, kept in the WAL.

The API, the record payloads, the snapshot image and the crash argument are in
docs/WAL.md.
"""

from __future__ import annotations

import json
import operator
import os
import re
import struct
import sys
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, compress, repeat
from typing import Any, Protocol

from supervisor.state.fs import FS, REAL
from supervisor.state.wal import DEFAULT_COMPACT_RECORDS, Recovered, RecoveryReport, Wal

__all__ = [
    "COUNTERS",
    "JOB_STATES",
    "STATE_CODES",
    "SUBLOG_COUNTER",
    "TERMINAL_STATES",
    "USAGE_KINDS",
    "JobQueue",
    "MemoryStorage",
    "QueueError",
    "ReadOnly",
    "Storage",
    "usage_counter",
    "usage_counter_parts",
]

def _logger() -> Any:
    """This module's logger, made on first use: importing the state layer stays light (no
    structlog, no config) for the processes that only read or append."""
    from supervisor import log

    return log.component("queue")

JOB_STATES: tuple[str, ...] = ("queued", "waiting", "starting", "running", "completed",
                               "failed", "cancelled", "timed_out", "lost")
TERMINAL_STATES: frozenset[str] = frozenset(("completed", "failed", "cancelled", "timed_out",
                                             "lost"))
COUNTERS: tuple[str, ...] = ("submitted", "completed", "failed", "cancelled", "timed_out",
                             "lost", "recovered")
#: The seq of the last record of the api's submission log (state.sublog) the scheduler
#: enqueued: advanced in the same WAL group as those jobs, so a crash keeps both or
#: neither (a bookmark, not a count: stats() leaves it out).
SUBLOG_COUNTER = "sublog_seq"
#: What the per-agent usage counters count (cost in micro-dollars: counters are integers;
#: `jobs`: finished jobs that reported usage).
USAGE_KINDS: tuple[str, ...] = ("input_tokens", "output_tokens", "cost_micro_usd", "turns",
                                "jobs")
_USAGE_COUNTER = re.compile(r"usage/([A-Za-z0-9][A-Za-z0-9._-]{0,63})/("
                            + "|".join(USAGE_KINDS) + ")")
STATE_CODES: dict[str, int] = {"queued": ord("q"), "waiting": ord("w"), "starting": ord("s"),
                               "running": ord("r"), "completed": ord("c"), "failed": ord("f"),
                               "cancelled": ord("x"), "timed_out": ord("t"), "lost": ord("l")}
_STATE_OF: dict[int, str] = {c: s for s, c in STATE_CODES.items()}
_QUEUED = STATE_CODES["queued"]
_VOID = 0                      # a duplicate found in a damaged log: hidden from every view
_NO_CHANGE = ord("-")
_OP_ENQUEUE, _OP_UPDATE, _OP_COUNT, _OP_FORGET = ord("E"), ord("U"), ord("C"), ord("F")
_ENQUEUE_AS = {c: bytes((ord("E"), c)) for c in STATE_CODES.values()}
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_IMAGE_MAGIC = b"BQUEUE01"
_IMAGE_HEADER = struct.Struct("<8sQQQQQ")
_SEARCH_LIMIT = 256            # more snapshot ids to find than this: build the index
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DEFAULT_FIELDS = b'{"attempts":0}'


class QueueError(Exception):
    """The queue cannot do what was asked (damaged snapshot layout, closed)."""


class ReadOnly(QueueError):
    """A write on a queue opened read-only."""


class Storage(Protocol):
    """Where the queue's records and snapshot live: `Wal` on disk, `MemoryStorage` in tests."""

    readonly: bool

    def take_recovered(self) -> Recovered: ...
    def write(self, payloads: Sequence[bytes]) -> int: ...
    def sync(self, ticket: int) -> None: ...
    def compaction_due(self) -> bool: ...
    def rotate(self) -> int: ...
    def install_snapshot(self, image: bytes, next_epoch: int) -> None: ...
    def close(self) -> None: ...


class MemoryStorage:
    """The in-memory twin of `Wal`: same contract, nothing durable.

    Keep the object to "reopen": a new JobQueue over it replays its snapshot and records
    exactly as a disk recovery would. `writes`, `syncs` and `snapshots` count the calls.
    """

    def __init__(self, *, compact_records: int = DEFAULT_COMPACT_RECORDS,
                 readonly: bool = False) -> None:
        self.readonly = readonly
        self.snapshot: bytes | None = None
        self.records: list[bytes] = []
        self.writes = 0
        self.syncs = 0
        self.snapshots = 0
        self._compact_records = compact_records
        self._covered = 0
        self._epoch = 1

    def take_recovered(self) -> Recovered:
        report = RecoveryReport(readonly=self.readonly,
                                snapshot_loaded=self.snapshot is not None,
                                records_replayed=len(self.records))
        snap = memoryview(self.snapshot) if self.snapshot is not None else None
        return Recovered(snap, list(self.records), report)

    def write(self, payloads: Sequence[bytes]) -> int:
        if self.readonly:
            raise ReadOnly("the storage is read-only")
        self.records.extend(payloads)
        self.writes += 1
        return self.writes

    def sync(self, ticket: int) -> None:
        self.syncs += 1

    def compaction_due(self) -> bool:
        return not self.readonly and len(self.records) >= self._compact_records

    def rotate(self) -> int:
        self._covered = len(self.records)
        self._epoch += 1
        return self._epoch

    def install_snapshot(self, image: bytes, next_epoch: int) -> None:
        self.snapshot = image
        del self.records[:self._covered]
        self._covered = 0
        self.snapshots += 1

    def close(self) -> None:
        return None

    def reader(self) -> MemoryStorage:
        """A read-only copy of the current content (what `readonly=True` would see)."""
        view = MemoryStorage(readonly=True)
        view.snapshot, view.records = self.snapshot, list(self.records)
        return view


# -- encoding --------------------------------------------------------------------------------

def _check_id(job_id: object) -> bytes:
    if not isinstance(job_id, str) or not _ID_RE.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r} is not [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    return job_id.encode("ascii")


def _state_code(state: object) -> int:
    code = STATE_CODES.get(state) if isinstance(state, str) else None
    if code is None:
        raise ValueError(f"state {state!r} is not one of {', '.join(JOB_STATES)}")
    return code


def _json(obj: object, what: str) -> bytes:
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"{what} cannot be stored as JSON: {exc}") from None


def _encode_enqueue(job_id: str, body: dict[str, Any]) -> bytes:
    name = _check_id(job_id)
    if not isinstance(body, dict):
        raise ValueError(f"job {job_id}: body must be a dict, not {type(body).__name__}")
    code = _QUEUED if "state" not in body else _state_code(body["state"])
    attempts = body.get("attempts", 0)
    fields = (_DEFAULT_FIELDS if type(attempts) is int and attempts == 0
              else _json({"attempts": attempts}, f"job {job_id} attempts"))
    return b"".join((_ENQUEUE_AS[code], name, b"\n", fields, b"\n",
                     _json(body, f"job {job_id} body")))


def _encode_update(job_id: str, fields: dict[str, Any]) -> bytes:
    name = _check_id(job_id)
    if not isinstance(fields, dict):
        raise ValueError(f"job {job_id}: fields must be a dict, not {type(fields).__name__}")
    if "id" in fields:
        raise ValueError(f"job {job_id}: the id cannot be changed")
    code = _state_code(fields["state"]) if "state" in fields else _NO_CHANGE
    delta = {k: v for k, v in fields.items() if k != "state"}
    raw = _json(delta, f"job {job_id} fields") if delta else b"{}"
    return b"".join((b"U", bytes((code,)), name, b"\n", raw))


def usage_counter(agent: str, kind: str) -> str:
    """The name of agent `agent`'s usage counter `kind` (one of USAGE_KINDS)."""
    name = f"usage/{agent}/{kind}"
    if _USAGE_COUNTER.fullmatch(name) is None:
        raise ValueError(f"no usage counter {kind!r} for agent {agent!r}")
    return name


def usage_counter_parts(name: str) -> tuple[str, str] | None:
    """(agent, kind) of a usage counter's name; None for any other counter."""
    m = _USAGE_COUNTER.fullmatch(name)
    return None if m is None else (m.group(1), m.group(2))


def _encode_forget(job_id: str) -> bytes:
    return b"F" + _check_id(job_id)


def _encode_incr(counter: str, n: int) -> bytes:
    if counter not in COUNTERS and counter != SUBLOG_COUNTER \
            and _USAGE_COUNTER.fullmatch(counter) is None:
        raise ValueError(f"counter {counter!r} is not one of {', '.join(COUNTERS)} "
                         "nor a usage counter usage/<agent>/<kind>")
    if type(n) is not int or n < 0:
        raise ValueError(f"counter increment must be a non-negative int, not {n!r}")
    return b"C" + counter.encode("ascii") + b"\n" + str(n).encode("ascii")


def _u64s(view: memoryview) -> memoryview:
    """Little-endian u64s from raw bytes: a zero-copy cast (a byteswapped copy on big-endian)."""
    if sys.byteorder == "little":
        return view.cast("B").cast("Q")
    out = array("Q")
    out.frombytes(view)
    out.byteswap()
    return memoryview(out)


def _u64_bytes(values: array[int]) -> bytes:
    if sys.byteorder != "little":
        values = array("Q", values)
        values.byteswap()
    return values.tobytes()


# -- the in-memory model ---------------------------------------------------------------------

class _Column:
    """A list of byte strings: a run loaded from a snapshot (one buffer + offsets, each
    item followed by a newline) and items appended since; any item can be replaced."""

    __slots__ = ("_base", "_buf", "_off", "_over", "_tail")

    def __init__(self, buf: memoryview | bytes = b"", off: memoryview | None = None) -> None:
        self._buf = buf
        self._off = off if off is not None else memoryview(array("Q", [0]))
        self._base = len(self._off) - 1
        self._tail: list[bytes] = []
        self._over: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self._base + len(self._tail)

    def __getitem__(self, i: int) -> bytes:
        if i >= self._base:
            return self._tail[i - self._base]
        got = self._over.get(i)
        if got is None:
            return bytes(self._buf[self._off[i]:self._off[i + 1] - 1])
        return got

    def set(self, i: int, value: bytes) -> None:
        if i >= self._base:
            self._tail[i - self._base] = value
        else:
            self._over[i] = value

    def append(self, value: bytes) -> None:
        self._tail.append(value)

    def base_buffer(self) -> memoryview | bytes:
        """The snapshot run's raw bytes (items each followed by a newline)."""
        return self._buf

    def containing(self, needle: bytes) -> list[int]:
        """The indices of the items that contain `needle`, ascending: a C-speed search
        through the snapshot run (then a bisect of its offsets per hit), a plain scan of
        the items appended or replaced since."""
        found: list[int] = []
        if self._base and needle:
            run = bytes(self._buf)
            pos = run.find(needle)
            while pos >= 0:
                i = bisect_right(self._off, pos) - 1
                end = self._off[i + 1] - 1              # the item's newline
                if pos + len(needle) <= end and i not in self._over:
                    found.append(i)
                pos = run.find(needle, max(pos + 1, end))
        found += [i for i, item in self._over.items() if needle in item]
        found += [self._base + k for k, item in enumerate(self._tail) if needle in item]
        return sorted(set(found))

    @property
    def offsets(self) -> memoryview:
        return self._off

    def encode(self) -> tuple[bytes, bytes]:
        """(offsets as little-endian u64s, data) of every item, for a snapshot image."""
        plus_one = map(operator.add, map(len, self._tail), repeat(1))
        if self._over:
            items = [self[i] for i in range(len(self))]
            offs = array("Q", accumulate(map(operator.add, map(len, items), repeat(1)),
                                         initial=0))
            return _u64_bytes(offs), b"\n".join(items) + b"\n" if items else b""
        offs = array("Q")
        offs.frombytes(self._off.cast("B"))   # native order, as `_u64s` left it
        offs.extend(accumulate(plus_one, initial=offs[-1]))
        del offs[self._base + 1]     # `initial` repeated the last base offset
        tail = b"\n".join(self._tail) + b"\n" if self._tail else b""
        return _u64_bytes(offs), bytes(self._buf) + tail


class _Ids:
    """Job ids in submission order, and where each one is.

    Ids from the snapshot stay in its buffer; the id -> position dict over them is built
    on the first lookup that needs it. Ids appended since are indexed as they come.
    """

    def __init__(self, col: _Column) -> None:
        self.col = col
        self._base = len(col)
        self._names: list[str] | None = None       # snapshot ids, decoded on demand
        self._index: dict[str, int] | None = None  # snapshot id -> position, on demand
        self._located: dict[str, int] = {}         # snapshot ids found without the index
        self._tail: list[str] = []
        self._tail_index: dict[str, int] = {}
        self._gone: set[int] = set()               # snapshot positions forgotten
        self.clashes: list[int] = []               # appended positions that duplicate

    def __len__(self) -> int:
        return self._base + len(self._tail)

    def name(self, i: int) -> str:
        if i >= self._base:
            return self._tail[i - self._base]
        if self._names is not None:
            return self._names[i]
        return self.col[i].decode("ascii")

    def all(self) -> list[str]:
        return self._snapshot_names() + self._tail

    def _snapshot_names(self) -> list[str]:
        if self._names is None:
            buf = self.col.base_buffer()
            self._names = str(buf[:-1], "ascii").split("\n") if self._base else []
        return self._names

    def appended(self, name: str) -> bool:
        return name in self._tail_index

    def add(self, name: str) -> int:
        i = len(self)
        self._tail.append(name)
        self._tail_index[name] = i
        self.col.append(name.encode("ascii"))
        return i

    def remember(self, name: str, i: int) -> None:
        """Note a snapshot position found some other way (first_queued, a search)."""
        if i < self._base:
            self._located[name] = i

    def forget(self, name: str, i: int) -> None:
        """`name` (at position `i`) is forgotten: no lookup finds it again, and the id is
        free for a new job."""
        if self._tail_index.get(name) == i:
            del self._tail_index[name]
        if self._located.get(name) == i:
            del self._located[name]
        if self._index is not None and self._index.get(name) == i:
            del self._index[name]
        if i < self._base:
            self._gone.add(i)

    def find(self, name: str) -> int | None:
        i = self._tail_index.get(name)
        if i is not None:
            return i
        i = self._located.get(name)
        if i is not None:
            return i
        return self._snapshot_index().get(name)

    def prepare(self, names: Iterable[str]) -> None:
        """Make `names` cheap to find: a byte search for a few, the index for many."""
        wanted = {n for n in names if n not in self._tail_index and n not in self._located}
        if self._gone:          # a byte search would find forgotten ids: use the index
            self._snapshot_index()
            return
        if not wanted or self._index is not None or not self._base:
            return
        if len(wanted) > _SEARCH_LIMIT:
            self._snapshot_index()
            return
        hay = b"\n" + bytes(self.col.base_buffer())
        offsets = self.col.offsets
        for name in wanted:
            at = hay.find(b"\n" + name.encode("ascii") + b"\n")
            if at >= 0:
                self._located[name] = bisect_left(offsets, at)

    def _snapshot_index(self) -> dict[str, int]:
        if self._index is None:
            names = self._snapshot_names()
            # reversed: when a damaged log holds an id twice, the first position wins
            self._index = dict(zip(reversed(names), reversed(range(len(names))), strict=True))
            for i in self._gone:
                if self._index.get(names[i]) == i:
                    del self._index[names[i]]
            clash = [n for n in self._tail_index if n in self._index]
            for n in clash:
                self.clashes.append(self._tail_index.pop(n))
        return self._index

    def rebased(self, col: _Column) -> _Ids:
        """The same ids, now all inside the snapshot run `col` (after a compaction)."""
        new = _Ids(col)
        new._names = self.all() if self._names is not None else None
        if self._index is not None:
            new._index = self._index | self._tail_index
        new._located = self._located | self._tail_index
        new._gone = set(self._gone)
        return new


class _Jobs:
    """The queue's state: columns in submission order, rebuilt by applying records."""

    def __init__(self, ids: _Ids, codes: bytearray, fields: _Column, bodies: _Column,
                 stats: dict[str, int]) -> None:
        self.ids = ids
        self.codes = codes
        self.fields = fields
        self.bodies = bodies
        self.stats = stats
        self.pending: dict[int, list[bytes]] = {}   # field deltas not merged yet
        self.queued_from = 0                        # no queued job below this position
        self.anomalies: list[str] = []
        self.orphans: list[str] = []                # replayed updates of unknown jobs

    def __len__(self) -> int:
        return len(self.codes)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, image: memoryview | None) -> _Jobs:
        if image is None:
            return cls(_Ids(_Column()), bytearray(), _Column(), _Column(), {})
        n, ids_len, fields_len, bodies_len, stats_len = _image_header(image)
        pos = _IMAGE_HEADER.size
        offs = []
        for _ in range(3):
            offs.append(_u64s(image[pos:pos + 8 * (n + 1)]))
            pos += 8 * (n + 1)
        codes = bytearray(image[pos:pos + n])
        pos += n
        cols = []
        for (length, off) in zip((ids_len, fields_len, bodies_len), offs, strict=True):
            if off[0] != 0 or off[-1] != length:
                raise QueueError("snapshot image: an offset table does not match its data")
            cols.append(_Column(image[pos:pos + length], off))
            pos += length
        stats = json.loads(bytes(image[pos:pos + stats_len]))
        if codes.translate(None, bytes([*_STATE_OF, _VOID])) or not isinstance(stats, dict):
            raise QueueError("snapshot image: unknown state code or bad counters")
        return cls(_Ids(cols[0]), codes, cols[1], cols[2], stats)

    def replay(self, records: list[bytes]) -> None:
        """Apply recovered records; snapshot jobs they touch are located in one go."""
        touched = [p[2:p.find(b"\n")].decode("ascii", "replace")
                   for p in records if p[0] == _OP_UPDATE]
        touched += [p[1:].decode("ascii", "replace") for p in records if p[0] == _OP_FORGET]
        self.ids.prepare(touched)
        for p in records:
            self.apply(p)

    # -- applying records (the only way the state changes) ----------------------------------
    def apply(self, p: bytes) -> None:
        op = p[0]
        if op == _OP_ENQUEUE:
            self._apply_enqueue(p)
        elif op == _OP_UPDATE:
            self._apply_update(p)
        elif op == _OP_COUNT:
            name, n = p[1:].split(b"\n")
            key = name.decode("ascii")
            self.stats[key] = self.stats.get(key, 0) + int(n)
        elif op == _OP_FORGET:
            self._apply_forget(p[1:].decode("ascii"))
        else:
            self.anomalies.append(f"record with unknown operation {p[:1]!r} ignored")

    def _apply_enqueue(self, p: bytes) -> None:
        name_b, fields, body = p[2:].split(b"\n", 2)
        name = name_b.decode("ascii")
        if self.ids.appended(name):
            self.anomalies.append(f"job {name}: enqueued twice in the log; second ignored")
            return
        self.ids.add(name)
        self.codes.append(p[1])
        self.fields.append(fields)
        self.bodies.append(body)            # raw JSON: parsed only by get()

    def _apply_update(self, p: bytes) -> None:
        name_b, delta = p[2:].split(b"\n", 1)
        name = name_b.decode("ascii")
        i = self.find(name)
        if i is None:           # its enqueue was lost with a damaged group of the log
            self.orphans.append(name)
            return
        code = p[1]
        if code != _NO_CHANGE:
            self.codes[i] = code
            if code == _QUEUED and i < self.queued_from:
                self.queued_from = i
        if delta != b"{}":
            self.pending.setdefault(i, []).append(delta)

    def _apply_forget(self, name: str) -> None:
        """The job leaves the queue: hidden at once, dropped by the next snapshot. A
        replay of a forget already applied (or compacted away) finds nothing: a no-op."""
        i = self.find(name)
        if i is None or self.codes[i] == _VOID:
            return
        self.codes[i] = _VOID
        self.pending.pop(i, None)
        self.ids.forget(name, i)

    # -- reading ----------------------------------------------------------------------------
    def find(self, name: str) -> int | None:
        i = self.ids.find(name)
        while self.ids.clashes:
            dup = self.ids.clashes.pop()
            self.codes[dup] = _VOID
            self.anomalies.append(f"job {self.ids.name(dup)}: in the snapshot and enqueued "
                                  "again in the log; the later copy is hidden")
            _logger().error("job queue anomaly", finding=self.anomalies[-1])
        return i

    def field_dict(self, i: int) -> dict[str, Any]:
        fields: dict[str, Any] = json.loads(self.fields[i])
        deltas = self.pending.pop(i, None)
        if deltas:
            for d in deltas:
                fields.update(json.loads(d))
            self.fields.set(i, _json(fields, "fields"))
        return fields

    def first_queued(self) -> str | None:
        i = self.codes.find(_QUEUED, self.queued_from)
        if i < 0:
            self.queued_from = len(self.codes)
            return None
        self.queued_from = i
        name = self.ids.name(i)
        self.ids.remember(name, i)
        return name

    def names_in(self, code: int | None) -> list[str]:
        names = self.ids.all()
        if code is None:
            if _VOID not in self.codes:
                return names
            return list(compress(names, map(_VOID.__ne__, self.codes)))
        return list(compress(names, map(code.__eq__, self.codes)))

    # -- snapshot ---------------------------------------------------------------------------
    def image(self) -> bytes:
        """The snapshot image of the current state; the model is then rebased onto it.
        Forgotten jobs (and hidden duplicates) are left out: the image holds what is
        known now, not what ever was."""
        for i in list(self.pending):
            self.field_dict(i)
        if _VOID in self.codes:
            return self._image_without_void()
        parts = [self.ids.col.encode(), self.fields.encode(), self.bodies.encode()]
        stats = _json(self.stats, "counters")
        n = len(self.codes)
        header = _IMAGE_HEADER.pack(_IMAGE_MAGIC, n, len(parts[0][1]), len(parts[1][1]),
                                    len(parts[2][1]), len(stats))
        image = b"".join([header, *(o for o, _ in parts), bytes(self.codes),
                          *(d for _, d in parts), stats])
        self._rebase(memoryview(image))
        return image

    def _image_without_void(self) -> bytes:
        keep = [i for i, c in enumerate(self.codes) if c != _VOID]
        parts = []
        for col in (self.ids.col, self.fields, self.bodies):
            items = [col[i] for i in keep]
            offs = array("Q", accumulate(map(operator.add, map(len, items), repeat(1)),
                                         initial=0))
            parts.append((_u64_bytes(offs), b"\n".join(items) + b"\n" if items else b""))
        stats = _json(self.stats, "counters")
        codes = bytes(self.codes[i] for i in keep)
        header = _IMAGE_HEADER.pack(_IMAGE_MAGIC, len(keep), len(parts[0][1]),
                                    len(parts[1][1]), len(parts[2][1]), len(stats))
        image = b"".join([header, *(o for o, _ in parts), codes, *(d for _, d in parts),
                          stats])
        fresh = _Jobs.load(memoryview(image))           # positions moved: start afresh
        self.ids, self.codes = fresh.ids, fresh.codes
        self.fields, self.bodies = fresh.fields, fresh.bodies
        self.pending, self.queued_from = {}, 0
        return image

    def _rebase(self, image: memoryview) -> None:
        fresh = _Jobs.load(image)
        self.ids = self.ids.rebased(fresh.ids.col)
        self.fields, self.bodies = fresh.fields, fresh.bodies


def _image_header(image: memoryview) -> tuple[int, int, int, int, int]:
    if len(image) < _IMAGE_HEADER.size:
        raise QueueError("snapshot image is shorter than its header")
    magic, n, ids_len, fields_len, bodies_len, stats_len = _IMAGE_HEADER.unpack_from(image)
    expected = (_IMAGE_HEADER.size + 24 * (n + 1) + n + ids_len + fields_len + bodies_len
                + stats_len)
    if magic != _IMAGE_MAGIC or expected != len(image):
        raise QueueError(f"snapshot image layout not understood (magic {magic!r}, "
                         f"{len(image)} bytes, expected {expected})")
    return n, ids_len, fields_len, bodies_len, stats_len


# -- the queue -------------------------------------------------------------------------------

class JobQueue:
    """The durable job queue (see the module docstring for the API)."""

    def __init__(self, storage: Storage) -> None:
        t0 = time.monotonic()
        got = storage.take_recovered()
        self._storage = storage
        self._lock = threading.Lock()
        self._compacting = threading.Lock()
        self._ticket = 0
        self.readonly = storage.readonly
        self._jobs = _Jobs.load(got.snapshot)
        self._jobs.replay(got.records)
        self.recovery: RecoveryReport = got.report
        for anomaly in self._jobs.anomalies:
            self.recovery.error(anomaly)
        self._jobs.anomalies.clear()
        self._report_orphans()
        self.recovery.jobs = len(self._jobs)
        self.recovery.duration_ms += (time.monotonic() - t0) * 1000.0
        self._compact()

    def _report_orphans(self) -> None:
        """Count and name the replayed updates whose job is unknown (skipped): after a
        damaged log lost an enqueue, the job's later updates have nothing to apply to."""
        orphans, self._jobs.orphans = self._jobs.orphans, []
        if not orphans:
            return
        self.recovery.orphan_updates = len(orphans)
        names = sorted(set(orphans))
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10
                                         else "")
        self.recovery.error(f"orphan updates: {len(orphans)} (updates of jobs whose enqueue "
                            f"was lost) skipped, for job(s) {shown}")

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, fs: FS = REAL,
             readonly: bool = False) -> JobQueue:
        """Recover the queue whose log lives in `directory` (e.g. Layout.wal_dir)."""
        return cls(Wal.open(directory, fs=fs, readonly=readonly))

    @classmethod
    def over(cls, storage: Storage) -> JobQueue:
        """A queue over any storage, e.g. `MemoryStorage()` or a `Wal` opened by hand."""
        return cls(storage)

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnly("the job queue is open read-only")

    def _commit(self, payloads: list[bytes]) -> int:
        """With the lock held: write `payloads` and apply them; return the ticket."""
        if payloads:
            self._ticket = self._storage.write(payloads)
            for p in payloads:
                self._jobs.apply(p)
        return self._ticket

    def _durable(self, ticket: int) -> None:
        if ticket:
            self._storage.sync(ticket)
        if self._storage.compaction_due():
            self._compact()

    def enqueue(self, job_id: str, body: dict[str, Any]) -> bool:
        """Add a job (state queued unless the body says otherwise). False: id exists."""
        self._writable()
        payload = _encode_enqueue(job_id, body)
        with self._lock:
            fresh = self._jobs.find(job_id) is None
            ticket = self._commit([payload]) if fresh else self._ticket
        self._durable(ticket)
        return fresh

    def enqueue_many(self, jobs: Iterable[tuple[str, dict[str, Any]]], *,
                     count: str | None = None,
                     counters: Mapping[str, int] | None = None) -> list[bool]:
        """Add many jobs with one fsync; one bool per job (False: duplicate id).

        `count` names a counter incremented by the number of jobs added, and `counters`
        others incremented as given, in the same atomic write: a crash keeps all or
        none, so a counter never drifts from what it counts."""
        self._writable()
        encoded = [(job_id, _encode_enqueue(job_id, body)) for job_id, body in jobs]
        fresh: list[bool] = []
        payloads: list[bytes] = []
        with self._lock:
            seen: set[str] = set()
            for job_id, payload in encoded:
                new = job_id not in seen and self._jobs.find(job_id) is None
                seen.add(job_id)
                fresh.append(new)
                if new:
                    payloads.append(payload)
            if count is not None and payloads:
                payloads.append(_encode_incr(count, len(payloads)))
            payloads += [_encode_incr(name, n) for name, n in sorted((counters or {}).items())
                         if n]
            ticket = self._commit(payloads)
        self._durable(ticket)
        return fresh

    def update(self, job_id: str, **fields: Any) -> None:
        """Change a job's state and/or fields, durably. KeyError if there is no such job."""
        self.update_many([(job_id, fields)])

    def update_many(self, changes: Iterable[tuple[str, dict[str, Any]]], *,
                    counters: Mapping[str, int] | None = None) -> None:
        """Apply many updates with one fsync; all are checked before any is written.

        `counters` are incremented in the same atomic write (a job's terminal state and
        the count of that state survive a crash together, or not at all)."""
        self._writable()
        encoded = [(job_id, _encode_update(job_id, fields)) for job_id, fields in changes]
        incs = [_encode_incr(name, n) for name, n in sorted((counters or {}).items()) if n]
        with self._lock:
            for job_id, _ in encoded:
                if self._jobs.find(job_id) is None:
                    raise KeyError(f"no job {job_id!r} in the queue")
            ticket = self._commit([p for _, p in encoded] + incs)
        self._durable(ticket)

    def forget(self, job_ids: Iterable[str]) -> list[str]:
        """Remove finished jobs from the queue, with one fsync; the ids forgotten (a job
        that is not terminal, or not here, is left alone). Counters are kept; the ids
        become free; the next snapshot no longer holds them."""
        self._writable()
        wanted = list(dict.fromkeys(job_ids))
        for job_id in wanted:
            _check_id(job_id)
        with self._lock:
            gone = []
            for job_id in wanted:
                i = self._jobs.find(job_id)
                if i is not None and _STATE_OF.get(self._jobs.codes[i]) in TERMINAL_STATES:
                    gone.append(job_id)
            ticket = self._commit([_encode_forget(j) for j in gone])
        self._durable(ticket)
        return gone

    def incr(self, counter: str, n: int = 1) -> None:
        """Add `n` to a persistent counter (one of COUNTERS), durably."""
        self._writable()
        payload = _encode_incr(counter, n)
        with self._lock:
            ticket = self._commit([payload])
        self._durable(ticket)

    def _compact(self) -> None:
        """Snapshot the state and drop the segments it covers, if the log asks for it."""
        if not self._compacting.acquire(blocking=False):
            return
        try:
            with self._lock:
                if not self._storage.compaction_due():
                    return
                image = self._jobs.image()
                try:
                    epoch = self._storage.rotate()
                except OSError as exc:
                    # The caller's records are durable already: do not report them as
                    # failed. The log is poisoned (WalFailed) and says so on the next call.
                    _logger().error("job queue: could not start a new segment", error=str(exc))
                    return
            try:
                self._storage.install_snapshot(image, epoch)
            except OSError as exc:
                _logger().error("job queue: snapshot failed; the log keeps every record "
                          "and compaction is retried later", error=str(exc))
        finally:
            self._compacting.release()

    # -- reading ----------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job: body merged with its current fields, plus "id" and "state"."""
        with self._lock:
            i = self._jobs.find(job_id)
            if i is None or self._jobs.codes[i] == _VOID:
                return None
            job: dict[str, Any] = json.loads(self._jobs.bodies[i])
            job.update(self._jobs.field_dict(i))
            job["state"] = _STATE_OF[self._jobs.codes[i]]
            job["id"] = job_id
            return job

    def state(self, job_id: str) -> str | None:
        """The job's state, or None if there is no such job."""
        with self._lock:
            i = self._jobs.find(job_id)
            return None if i is None else _STATE_OF.get(self._jobs.codes[i])

    def ids(self, state: str | None = None) -> list[str]:
        """Job ids in submission order, all or those in `state`."""
        code = None if state is None else _state_code(state)
        with self._lock:
            return self._jobs.names_in(code)

    def raw(self, state: str | None = None,
            needles: Sequence[bytes] = ()) -> list[tuple[str, bytes]]:
        """(id, the body's raw JSON bytes) in submission order, all or those in `state`,
        keeping only bodies that contain every one of `needles` (a byte search, no JSON
        decoding: filters over 100,000 jobs stay fast; the caller decodes what is left
        and checks it properly)."""
        code = None if state is None else _state_code(state)
        with self._lock:
            jobs = self._jobs
            codes = jobs.codes
            bodies = jobs.bodies
            rest = list(needles[1:])
            if needles:
                candidates: Iterable[int] = bodies.containing(needles[0])
            else:
                candidates = range(len(codes))
            out = []
            for i in candidates:
                c = codes[i]
                if c == _VOID or (code is not None and c != code):
                    continue
                body = bodies[i]
                if all(n in body for n in rest):
                    out.append((jobs.ids.name(i), bytes(body)))
            return out

    def field_values(self, key: str, states: Iterable[str] | None = None) -> dict[str, Any]:
        """{job id: the current value of field `key`} of every job (of `states`, or all)
        whose fields hold it. Fields only (what enqueue and updates set apart from the
        body: attempts, timestamps, exit codes...), never the bodies, decoded in one go:
        the reaper reads every finished job's `finished_at` each pass this way."""
        wanted = (None if states is None else
                  bytes(sorted({_state_code(s) for s in states})))
        with self._lock:
            jobs = self._jobs
            codes = jobs.codes
            if wanted is None:
                chosen = [i for i, c in enumerate(codes) if c != _VOID]
            else:
                chosen = [i for i, c in enumerate(codes) if c in wanted]
            column, pending = jobs.fields, jobs.pending
            raw = [column[i] for i in chosen]
            # deltas of the log's tail not merged into the column yet, in log order
            late = [(k, d) for k, i in enumerate(chosen) if i in pending for d in pending[i]]
            names = [jobs.ids.name(i) for i in chosen]
        decoded: list[dict[str, Any]] = json.loads(b"[" + b",".join(raw) + b"]")
        if late:
            deltas = json.loads(b"[" + b",".join(d for _, d in late) + b"]")
            for (k, _), delta in zip(late, deltas, strict=True):
                decoded[k].update(delta)
        out: dict[str, Any] = {}
        seen: set[str] = set()          # a damaged log's duplicate id: the first copy wins
        for name, fields in zip(names, decoded, strict=True):
            if name not in seen:
                seen.add(name)
                if key in fields:
                    out[name] = fields[key]
        return out

    def ids_in(self, states: Iterable[str]) -> list[str]:
        """Job ids in any of `states`, submission order, in one pass over the states."""
        wanted = {_state_code(s) for s in states}
        with self._lock:
            names = self._jobs.ids.all()
            return list(compress(names, map(wanted.__contains__, self._jobs.codes)))

    def first_queued(self) -> str | None:
        """The oldest queued job's id (FIFO), or None."""
        with self._lock:
            return self._jobs.first_queued()

    def counts(self) -> dict[str, int]:
        """Number of jobs in each of the nine states."""
        with self._lock:
            codes = self._jobs.codes
            return {state: codes.count(code) for state, code in STATE_CODES.items()}

    def holds(self, state: str) -> bool:
        """Whether any job is in `state` (a scan that stops at the first)."""
        with self._lock:
            return STATE_CODES[state] in self._jobs.codes

    def stats(self) -> dict[str, int]:
        """The persistent counters: every name in COUNTERS (0 if never incremented), then
        the usage counters that exist."""
        with self._lock:
            out = {name: int(self._jobs.stats.get(name, 0)) for name in COUNTERS}
            for name, n in self._jobs.stats.items():
                if name != SUBLOG_COUNTER:
                    out.setdefault(name, int(n))
            return out

    def counter(self, name: str) -> int:
        """One persistent counter's value (0 if never incremented), SUBLOG_COUNTER too."""
        with self._lock:
            return int(self._jobs.stats.get(name, 0))

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs) - self._jobs.codes.count(_VOID)

    def replayed_to(self) -> tuple[int, dict[str, int]] | None:
        """Where this open's recovery read the log to: (the snapshot's next epoch, each
        replayed segment's end); a follower goes on from there (state.queuefollow). None
        for storage that is not a log."""
        report = getattr(self._storage, "report", None)
        if not isinstance(report, RecoveryReport):
            return None
        return report.snapshot_next_epoch, dict(report.segment_ends)

    def follow(self, payloads: Sequence[bytes]) -> None:
        """A read-only queue that follows the log (state.queuefollow): apply records the
        owner appended since this queue was opened, as recovery would have."""
        if not self.readonly:
            raise QueueError("only a read-only queue follows the log")
        with self._lock:
            self._jobs.replay(list(payloads))

    def close(self) -> None:
        """Release the log (further writes raise). Idempotent."""
        self._storage.close()
