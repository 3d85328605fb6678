"""Telemetry ingest: what devices publish, parsed, deduplicated and written to the database in batches.

Messages arrive on paho's thread and wait in a bounded queue; one writer
thread takes up to `ingest_batch_size` of them (or whatever came within
`ingest_flush_s`), writes them in one transaction, and only then acknowledges
them to the broker. No single message can stop ingest:
- every message is checked before it joins a batch (`cloud_registry.storable`: numbers within
  their columns, texts within their lengths and free of NUL, finite floats);
  payloads that do not parse, name another device than their topic, or come
  from unknown devices are dropped the same way;
- a batch the database still refuses with a data error is split in halves
  until the message it refuses is alone; that one is dropped as poison;
- only a database that is unreachable (`OperationalError`, a lost connection)
  is retried, with the same batch and a back-off up to 30 s.
Dropped messages are counted, logged with their kind and device (never their
content) and acknowledged, so the broker does not deliver them again; a
message id seen before is dropped silently (QoS 1 redelivers, agents resend).

`apply_messages` is also what the device API's HTTP fallbacks call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud_registry import devices as device_records
from cloud_registry import models as m
from cloud_registry import reports
from cloud_registry.storable import unstorable
from edgewire.messages import PayloadError, Presence, Telemetry, UpdateStatus, parse_payload
from edgewire.topics import parse_topic

log = logging.getLogger("cloud_registry.ingest")


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dropped: int = 0
    poison: int = 0  # dropped because the database refused them (counted in `dropped` too)
    batches: int = 0
    errors: int = 0  # failed attempts to write (database down, or a batch with a poison message)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Incoming:
    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    parsed: object = field(default=None)


def parse_incoming(item: Incoming) -> Presence | Telemetry | UpdateStatus | None:
    """The payload of a data topic, checked against its topic; None (and a log line) when unusable."""
    topic = parse_topic(item.topic)
    if topic is None or topic.direction != "data":
        return None
    if not item.payload:  # a cleared retained message
        return None
    try:
        message = parse_payload(topic.kind, item.payload)
    except PayloadError as exc:
        log.warning("dropped a %s message from %s/%s: %s", topic.kind, topic.fleet, topic.device, exc)
        return None
    if (message.fleet, message.device) != (topic.fleet, topic.device):  # type: ignore[attr-defined]
        log.warning(
            "dropped a %s message on %s/%s naming another device", topic.kind, topic.fleet, topic.device
        )
        return None
    return message  # type: ignore[return-value]


def apply_messages(
    session: Session, messages: list[Presence | Telemetry | UpdateStatus], stats: IngestStats | None = None
) -> None:
    """Write a batch of parsed messages, each device's in the order they came.

    Telemetry is written in bulk (one statement for the batch), update statuses too; a presence or update
    status first writes what was gathered before it of the same device, so a device's state ends as its
    last message left it."""
    stats = stats if stats is not None else IngestStats()
    names = {msg.device for msg in messages}
    # Telemetry, most of what comes in, needs only the device's id; ORM objects only for the rest.
    known = device_records.enrolled_devices(session, names)
    stateful = {msg.device for msg in messages if not isinstance(msg, Telemetry) and msg.device in known}
    devices = (
        {d.name: d for d in session.scalars(select(m.Device).where(m.Device.name.in_(stateful)))}
        if stateful
        else {}
    )
    telemetry: list[tuple[int, Telemetry]] = []
    pending: set[str] = set()  # devices with telemetry in `telemetry`, not yet written
    updates: list[tuple[m.Device, UpdateStatus]] = []
    for message in messages:
        ref = known.get(message.device)
        if ref is None or ref[1] != message.fleet:
            stats.dropped += 1
            log.warning(
                "dropped a %s message from unknown device %s/%s", message.kind, message.fleet, message.device
            )
            continue
        if isinstance(message, Telemetry):
            telemetry.append((ref[0], message))
            pending.add(message.device)
            continue
        if message.device in pending:
            # Telemetry this device sent before this message goes first: written after it, its model
            # and online flag would undo what an update status or a Last Will just set.
            _record_updates(session, updates, stats)
            _record_telemetry(session, telemetry, stats)
            for name in pending & devices.keys():  # written past the ORM: read them again when next used
                session.expire(devices[name])
            pending.clear()
        if isinstance(message, Presence):
            _record_updates(session, updates, stats)  # the statuses before it, in their order
            reports.apply_presence(session, device=devices[message.device], presence=message)
            stats.stored += 1
        elif isinstance(message, UpdateStatus):
            updates.append((devices[message.device], message))
    _record_updates(session, updates, stats)
    _record_telemetry(session, telemetry, stats)


def _record_telemetry(session: Session, telemetry: list, stats: IngestStats) -> None:
    """The telemetry gathered so far, in one statement; the list is emptied."""
    if telemetry:
        inserted = reports.record_telemetry(session, items=telemetry)
        stats.stored += inserted
        stats.duplicates += len(telemetry) - inserted
        telemetry.clear()


def _record_updates(session: Session, updates: list, stats: IngestStats) -> None:
    """The update statuses gathered so far, in one go; the list is emptied."""
    stored = reports.record_updates(session, updates)
    stats.stored += stored
    stats.duplicates += len(updates) - stored
    updates.clear()


class IngestWriter:
    """The queues between paho's thread and the database, and the threads that drain them.

    `writers` lanes, each a queue and a thread with a database connection of its own: while one lane
    waits on the database to commit its batch, another parses and sends the next (one lane spent over
    half its time waiting on PostgreSQL). A device's messages always take the same lane, so they are
    written in the order they came; lanes writing the same rows is what two replicas already do
    (devices are locked in id order, duplicates fall on the msg_id key).
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        batch_size: int = 500,
        flush_s: float = 0.2,
        max_queue: int = 100_000,
        ack: Callable[[list[tuple[int, int]]], None] | None = None,
        writers: int = 1,
    ) -> None:
        self.factory, self.batch_size, self.flush_s = factory, batch_size, flush_s
        self.queues: list[queue.Queue[Incoming]] = [
            queue.Queue(maxsize=max(1, max_queue // writers)) for _ in range(writers)
        ]
        self.ack = ack
        self.stats = IngestStats()  # one live object for every lane, counted under the lock
        self.last_commit = time.time()  # when a batch was last stored: the commit lag while messages wait
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(lane,), name=f"ingest-writer-{index}", daemon=True)
            for index, lane in enumerate(self.queues)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def put(self, item: Incoming) -> None:
        # Blocking when full holds paho's thread, so the broker stops sending: back-pressure, not loss.
        self._lane(item.topic).put(item)

    def _lane(self, topic: str) -> queue.Queue[Incoming]:
        if len(self.queues) == 1:
            return self.queues[0]
        return self.queues[zlib.crc32(topic.rsplit("/", 1)[0].encode()) % len(self.queues)]

    def idle(self) -> bool:
        return all(lane.unfinished_tasks == 0 for lane in self.queues)

    def depth(self) -> int:
        """Messages received and not yet written (queued, or in a batch being written)."""
        return sum(lane.unfinished_tasks for lane in self.queues)

    def commit_lag(self, now: float) -> float:
        """Seconds since the last commit while messages wait; 0 when none wait."""
        return max(0.0, now - self.last_commit) if self.depth() else 0.0

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _take(self, lane: queue.Queue[Incoming]) -> list[Incoming]:
        try:
            first = lane.get(timeout=0.5)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(lane.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _run(self, lane: queue.Queue[Incoming]) -> None:
        while not self._stop.is_set() or not lane.empty():
            batch = self._take(lane)
            if not batch:
                continue
            self.write(batch)
            for _ in batch:
                lane.task_done()

    def write(self, batch: list[Incoming]) -> None:
        """Check, store and acknowledge one batch; returns without acknowledging only when stopping."""
        self._count(received=len(batch))
        parsed = []
        for item in batch:
            message = parse_incoming(item)
            if message is None:
                self._count(dropped=1)
                continue
            problem = unstorable(message, bytes(item.payload))
            if problem is not None:
                self._count(dropped=1)
                log.warning(
                    "dropped a %s message from %s/%s: %s",
                    message.kind,
                    message.fleet,
                    message.device,
                    problem,
                )
                continue
            parsed.append(message)
        if not self._store(parsed):
            return  # shutting down: unacknowledged messages are redelivered to the next session
        self._count(batches=1)
        if self.ack is not None:
            self.ack([(item.mid, item.qos) for item in batch if item.qos])

    def _store(self, messages: list[Presence | Telemetry | UpdateStatus]) -> bool:
        """Commit these messages, isolating any the database refuses; False only when stopping."""
        if not messages:
            return True
        delay = 0.5
        while True:
            attempt = IngestStats()  # merged only once committed, so a failed try counts nothing twice
            try:
                with self.factory() as session, session.begin():
                    apply_messages(session, messages, attempt)
            except Exception as exc:
                self._count(errors=1)
                if not database_unavailable(exc):
                    return self._split(messages, exc)
                log.error(
                    "ingest: the database is unavailable or the write conflicted (%s); retrying %d messages in %.1f s",
                    type(exc).__name__,
                    len(messages),
                    delay,
                )
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 30)
                continue
            self._count(stored=attempt.stored, duplicates=attempt.duplicates, dropped=attempt.dropped)
            self.last_commit = time.time()
            return True

    def _split(self, messages: list[Presence | Telemetry | UpdateStatus], exc: Exception) -> bool:
        """A data error: halve the batch until the refused message is alone, then drop it as poison."""
        if len(messages) == 1:
            message = messages[0]
            self._count(dropped=1, poison=1)
            # The exception's text may quote the message's values: name its type only.
            log.warning(
                "dropped a %s message from %s/%s that the database refused (%s)",
                message.kind,
                message.fleet,
                message.device,
                type(exc).__name__,
            )
            return True
        middle = len(messages) // 2
        return self._store(messages[:middle]) and self._store(messages[middle:])


def database_unavailable(exc: BaseException) -> bool:
    """True for a database that is down or unreachable, or a write that lost a deadlock or serialization
    conflict (PostgreSQL reports those as OperationalError too): retry later. False for one that refuses
    the data."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError)
