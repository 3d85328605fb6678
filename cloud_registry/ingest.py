"""Telemetry ingest: what devices publish, parsed, deduplicated and written to the database in batches.

Messages arrive on paho's thread and wait in a bounded queue; one writer
thread takes up to `ingest_batch_size` of them (or whatever came within
`ingest_flush_s`), writes them in one transaction, and only then acknowledges
them to the broker. A failed write is retried with the same batch. Payloads
that do not parse, name another device than their topic, or come from
unknown devices are logged (without their content) and dropped; a message
id seen before is dropped silently (QoS 1 redelivers, agents resend).

`apply_messages` is also what the device API's HTTP fallbacks call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud_registry import crud
from cloud_registry import models as m
from cloud_registry.schemas import INT32_MAX, INT64_MAX
from edgewire.messages import PayloadError, Presence, Telemetry, UpdateStatus, parse_payload
from edgewire.topics import parse_topic

log = logging.getLogger("cloud_registry.ingest")


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dropped: int = 0
    batches: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Incoming:
    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    parsed: object = field(default=None)


def fits_columns(message: Presence | Telemetry | UpdateStatus) -> bool:
    """The wire allows any integer; the database columns do not. Out-of-range values are refused, not stored."""
    small: list[int | None] = []
    if isinstance(message, Presence):
        small = [message.session, message.model.version if message.model else None]
    elif isinstance(message, Telemetry):
        small = [
            message.inference.count,
            message.inference.errors,
            message.model.version if message.model else None,
        ]
    elif isinstance(message, UpdateStatus):
        small = [message.from_version, message.to_version, message.rollout_id]
    big = [getattr(message, "seq", None)]
    return all(v is None or v <= INT32_MAX for v in small) and all(v is None or v <= INT64_MAX for v in big)


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
    """Write a batch of parsed messages in order: presence, then telemetry in bulk, update statuses."""
    stats = stats if stats is not None else IngestStats()
    names = {msg.device for msg in messages}
    devices = {
        d.name: d
        for d in session.scalars(
            select(m.Device).where(m.Device.name.in_(names), m.Device.revoked_at.is_(None))
        )
    }
    telemetry: list[tuple[m.Device, Telemetry]] = []
    for message in messages:
        device = devices.get(message.device)
        if device is None or device.fleet != message.fleet:
            stats.dropped += 1
            log.warning(
                "dropped a %s message from unknown device %s/%s", message.kind, message.fleet, message.device
            )
            continue
        if isinstance(message, Presence):
            crud.apply_presence(session, device=device, presence=message)
            stats.stored += 1
        elif isinstance(message, Telemetry):
            telemetry.append((device, message))
        elif isinstance(message, UpdateStatus):
            if crud.record_update(session, device=device, message=message):
                stats.stored += 1
            else:
                stats.duplicates += 1
    if telemetry:
        inserted = crud.record_telemetry(session, items=telemetry)
        stats.stored += inserted
        stats.duplicates += len(telemetry) - inserted


class IngestWriter:
    """The queue between paho's thread and the database, and the thread that drains it."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        batch_size: int = 500,
        flush_s: float = 0.2,
        max_queue: int = 100_000,
        ack=None,  # type: ignore[no-untyped-def]
    ) -> None:
        self.factory, self.batch_size, self.flush_s = factory, batch_size, flush_s
        self.queue: queue.Queue[Incoming] = queue.Queue(maxsize=max_queue)
        self.ack = ack
        self.stats = IngestStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def put(self, item: Incoming) -> None:
        # Blocking when full holds paho's thread, so the broker stops sending: back-pressure, not loss.
        self.queue.put(item)

    def idle(self) -> bool:
        return self.queue.unfinished_tasks == 0

    def _take(self) -> list[Incoming]:
        try:
            first = self.queue.get(timeout=0.5)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self._stop.is_set() or not self.queue.empty():
            batch = self._take()
            if not batch:
                continue
            self.write(batch)
            for _ in batch:
                self.queue.task_done()

    def write(self, batch: list[Incoming]) -> None:
        self.stats.received += len(batch)
        parsed = []
        for item in batch:
            message = parse_incoming(item)
            if message is None:
                self.stats.dropped += 1
            else:
                parsed.append(message)
        delay = 0.5
        while True:
            try:
                with self.factory() as session, session.begin():
                    apply_messages(session, parsed, self.stats)
                break
            except Exception:
                self.stats.errors += 1
                log.exception("ingest batch of %d failed; retrying in %.1f s", len(parsed), delay)
                if self._stop.wait(delay):
                    return  # shutting down: unacknowledged messages are redelivered to the next session
                delay = min(delay * 2, 30)
        self.stats.batches += 1
        if self.ack is not None:
            for item in batch:
                self.ack(item.mid, item.qos)
