"""Telemetry retention: raw rows older than `telemetry_retention_s` become hourly aggregates.

`roll_up` takes raw telemetry received before a cutoff, oldest first and
`chunk` rows per transaction, adds it up per (device, model name, model
version, hour of `received_at`) into `telemetry_hourly` (merging into a row
an earlier pass left for the same key), and deletes those raw rows in the
same transaction: a row is either raw or counted in its hour, never both,
never neither. The cutoff is an hour boundary, so each hour is rolled up once
in the usual case; a merge covers the rest. On PostgreSQL a transaction-level
advisory lock lets one replica at a time do it.

The raw table then holds at most `telemetry_retention_s` (plus one hour, plus
what one roll-up interval brings) of telemetry under steady load. Readers of
telemetry (the rollout gates, the dashboard) add the aggregates of the hours
their window overlaps to the raw rows they find (see `rollout_evidence._device_windows`
and `devices.device_points`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from cloud_registry import models as m

log = logging.getLogger("cloud_registry.retention")

HOUR = 3600
_LOCK_KEY = 0x45444745_54454C  # "EDGETEL": one roll-up at a time across replicas (PostgreSQL)


def hour_of(at: float) -> int:
    return int(at // HOUR) * HOUR


def cutoff_for(now: float, retention_s: float) -> int:
    """Raw rows received before this are rolled up: the hour boundary at or before now - retention."""
    return hour_of(now - retention_s)


@dataclass
class _Sums:
    reports: int = 0
    seconds: float = 0.0
    inferences: int = 0
    errors: int = 0
    p50_weighted: float = 0.0
    p50_count: int = 0
    p95_weighted: float = 0.0
    p95_count: int = 0
    cpu_percent_sum: float = 0.0
    memory_percent_sum: float = 0.0
    system_reports: int = 0
    confidence_hist: list[int] | None = field(default=None)

    def add_raw(self, row: Any) -> None:
        count = row.count or 0
        self.reports += 1
        self.seconds += row.interval_s or 0.0
        self.inferences += count
        self.errors += row.errors or 0
        if row.latency_ms_p50 is not None and count > 0:
            self.p50_weighted += count * row.latency_ms_p50
            self.p50_count += count
        if row.latency_ms_p95 is not None and count > 0:
            self.p95_weighted += count * row.latency_ms_p95
            self.p95_count += count
        system = row.system or {}
        cpu, memory = system.get("cpu_percent"), system.get("memory_percent")
        if isinstance(cpu, int | float):
            self.cpu_percent_sum += float(cpu)
            self.memory_percent_sum += float(memory) if isinstance(memory, int | float) else 0.0
            self.system_reports += 1
        hist = (row.drift or {}).get("confidence_hist")
        if hist:
            self.confidence_hist = add_hist(self.confidence_hist, hist)


def add_hist(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    if not a:
        return list(b) if b else None
    if not b:
        return list(a)
    width = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(width)]


_NUMERIC = (
    "reports",
    "seconds",
    "inferences",
    "errors",
    "p50_weighted",
    "p50_count",
    "p95_weighted",
    "p95_count",
    "cpu_percent_sum",
    "memory_percent_sum",
    "system_reports",
)


def _locked(session: Session) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        return True  # SQLite: one writer at a time anyway
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}).scalar())


def roll_up_chunk(session: Session, *, cutoff: float, chunk: int = 20_000) -> int:
    """Roll up at most `chunk` of the oldest raw rows received before `cutoff`; how many were rolled up.

    Run inside a transaction (the caller's); 0 when another replica holds the roll-up lock."""
    if not _locked(session):
        return 0
    t = m.TelemetryRecord
    rows = session.execute(
        select(
            t.id,
            t.device_id,
            t.model_name,
            t.model_version,
            t.received_at,
            t.interval_s,
            t.count,
            t.errors,
            t.latency_ms_p50,
            t.latency_ms_p95,
            t.system,
            t.drift,
        )
        .where(t.received_at < cutoff)
        .order_by(t.received_at, t.id)
        .limit(chunk)
    ).all()
    if not rows:
        return 0
    sums: dict[tuple[int, str, int, int], _Sums] = {}
    for row in rows:
        key = (row.device_id, row.model_name or "", row.model_version or 0, hour_of(row.received_at))
        sums.setdefault(key, _Sums()).add_raw(row)
    hours = {key[3] for key in sums}
    h = m.TelemetryHourly
    existing = {
        (r.device_id, r.model_name, r.model_version, r.hour): r
        for r in session.scalars(
            select(h).where(h.hour.in_(sorted(hours)), h.device_id.in_(sorted({key[0] for key in sums})))
        )
    }
    for key, total in sums.items():
        row = existing.get(key)
        if row is None:
            session.add(
                h(
                    device_id=key[0],
                    model_name=key[1],
                    model_version=key[2],
                    hour=key[3],
                    confidence_hist=total.confidence_hist,
                    **{name: getattr(total, name) for name in _NUMERIC},
                )
            )
            continue
        for name in _NUMERIC:
            setattr(row, name, getattr(row, name) + getattr(total, name))
        row.confidence_hist = add_hist(row.confidence_hist, total.confidence_hist)
    ids = [row.id for row in rows]
    for start in range(0, len(ids), 5000):
        session.execute(delete(t).where(t.id.in_(ids[start : start + 5000])))
    session.flush()
    return len(rows)


def roll_up(
    factory: sessionmaker[Session], *, cutoff: float, chunk: int = 20_000, max_chunks: int = 50
) -> int:
    """Roll up raw rows received before `cutoff`, one transaction per chunk; how many were rolled up."""
    total = 0
    for _ in range(max_chunks):
        with factory() as session, session.begin():
            done = roll_up_chunk(session, cutoff=cutoff, chunk=chunk)
        total += done
        if done < chunk:
            break
    return total


class Retention:
    """Runs `roll_up` at most every `interval_s`, with the cutoff `retention_s` before now.

    One tick rolls up at most `max_chunks` x `chunk` rows (about 3 s of CPU at the defaults on SQLite), so
    the reconciler's thread it runs on is not held up by a backlog; while one is left, the next tick goes
    on without waiting for the interval."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        retention_s: float,
        interval_s: float,
        clock: Callable[[], float] = time.time,
        chunk: int = 20_000,
        max_chunks: int = 5,
    ) -> None:
        self.factory, self.retention_s, self.interval_s, self.clock = factory, retention_s, interval_s, clock
        self.chunk, self.max_chunks = chunk, max_chunks
        self._last: float | None = None

    def tick(self) -> int:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            return 0
        self._last = now
        try:
            rolled = roll_up(
                self.factory,
                cutoff=cutoff_for(now, self.retention_s),
                chunk=self.chunk,
                max_chunks=self.max_chunks,
            )
        except Exception:  # a failed pass is retried at the next interval; nothing half-done (transactions)
            log.exception("telemetry roll-up failed")
            return 0
        if rolled >= self.chunk * self.max_chunks:
            self._last = None  # a backlog: go on at the next tick
        if rolled:
            log.info("rolled up %d raw telemetry rows older than %.0f s", rolled, self.retention_s)
        return rolled
