"""Store-and-forward: every queued message (telemetry, update status) waits in SQLite until the broker acks it.

paho keeps unacknowledged messages in memory only; this queue is what makes a
broker outage or an agent restart lose nothing. A message is inserted with
its `msg_id` and the device's next `seq` in one transaction (so seq is
strictly increasing across restarts), and deleted only when the broker's
PUBACK for it arrives (or the registry answered its HTTP fallback). Past
`max_messages` the oldest are dropped, and the count of dropped messages is
kept here too, for the telemetry to report. A message already handed to paho
(`claim`) is never the one dropped: paho delivers it whatever the outbox does,
so counting it as dropped would report a loss that did not happen. The bound
is therefore `max_messages` plus the few in flight.

WAL with synchronous=FULL: a committed message survives a kill and a power cut.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgewire import QueueStats, new_message_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Message:
    id: int
    kind: str
    seq: int
    msg_id: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path, max_messages: int) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._held: set[int] = set()  # rows handed to paho in this process, awaiting their ack
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def next_counter(self, name: str) -> int:
        """Increment a persisted counter (the presence session) and return its new value."""
        with self._transaction():
            value = self._counter(name) + 1
            self._set_counter(name, value)
        return value

    def enqueue(self, kind: str, build: Callable[[str, int], bytes]) -> Message:
        """Queue the payload `build(msg_id, seq)` under the next seq; drop the oldest past the bound."""
        msg_id = new_message_id()
        with self._transaction():
            seq = self._counter("seq") + 1
            payload = build(msg_id, seq)
            cursor = self._db.execute(
                "INSERT INTO messages(kind, seq, msg_id, payload, created) VALUES(?, ?, ?, ?, ?)",
                (kind, seq, msg_id, payload, time.time()),
            )
            self._set_counter("seq", seq)
            # The bound is on the rows not handed to paho: counting the held ones too would, while
            # acks are slow, drop the message just queued (CI saw 48 dropped for 47 that never arrived).
            held = sorted(self._held)
            not_held = f"WHERE id NOT IN ({','.join('?' * len(held))})"
            (waiting,) = self._db.execute(f"SELECT COUNT(*) FROM messages {not_held}", held).fetchone()
            excess = waiting - self.max_messages
            if excess > 0:
                dropped = self._db.execute(
                    f"DELETE FROM messages WHERE id IN (SELECT id FROM messages {not_held} ORDER BY id LIMIT ?)",
                    (*held, excess),
                ).rowcount
                self._set_counter("dropped", self._counter("dropped") + dropped)
        return Message(int(cursor.lastrowid), kind, seq, msg_id, payload)

    def peek(self, *, after_id: int = 0, limit: int = 50, kind: str | None = None) -> list[Message]:
        """The oldest waiting messages with an id above `after_id`, in order."""
        with self._lock:
            return self._select(after_id, limit, kind)

    def _select(self, after_id: int, limit: int, kind: str | None) -> list[Message]:
        query = "SELECT id, kind, seq, msg_id, payload FROM messages WHERE id > ?"
        args: list = [after_id]
        if kind is not None:
            query += " AND kind = ?"
            args.append(kind)
        query += " ORDER BY id LIMIT ?"
        args.append(limit)
        rows = self._db.execute(query, args).fetchall()
        return [Message(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4])) for r in rows]

    def claim(self, *, after_id: int = 0, limit: int = 50) -> list[Message]:
        """`peek`, and hold what it returns in the same lock: those are about to be handed to paho, and
        past the bound others go before them. One step, or a drop between the read and the hold would
        count as lost a message that paho then delivers."""
        with self._lock:
            messages = self._select(after_id, limit, None)
            self._held.update(m.id for m in messages)
        return messages

    def release(self, message_id: int) -> None:
        """paho did not take a claimed message after all: it may be dropped again."""
        with self._lock:
            self._held.discard(message_id)

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            self._held.difference_update(ids)

    def stats(self) -> QueueStats:
        with self._lock:
            (pending,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
            dropped = self._counter("dropped")
        return QueueStats(pending=int(pending), dropped_total=dropped)

    def last_seq(self) -> int:
        with self._lock:
            return self._counter("seq")
