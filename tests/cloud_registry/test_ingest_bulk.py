"""The bulk telemetry write (one statement per batch on PostgreSQL, no ORM object per message) stores
what the per-row path stored: duplicates dropped, the newest message per device as its last, columns
and JSON as before. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cloud_registry import models as m
from cloud_registry import reports
from tests.cloud_registry import test_ingest_poison
from tests.cloud_registry.helpers import telemetry

database_url = test_ingest_poison.database_url
writer_registry = test_ingest_poison.writer_registry  # a registry without MQTT, devices dev-a and dev-b


def _device(session, name: str) -> m.Device:  # type: ignore[no-untyped-def]
    return session.scalar(select(m.Device).where(m.Device.name == name))


def test_bulk_telemetry_rows_duplicates_and_the_newest_per_device(writer_registry, backend):
    factory = writer_registry.factory
    with factory() as session:
        a, b = _device(session, "dev-a").id, _device(session, "dev-b").id
    first = telemetry("dev-a", 5, p95=12.5, confidence=[1] * 10)
    first.queue = None
    batch = [(a, first), (a, telemetry("dev-a", 3)), (b, telemetry("dev-b", 1, version=None)), (a, first)]
    with factory() as session, session.begin():
        assert reports.record_telemetry(session, items=batch) == 3  # the repeated msg_id once
    with factory() as session, session.begin():  # again: all known, and an older seq than the last
        assert reports.record_telemetry(session, items=[*batch, (a, telemetry("dev-a", 4))]) == 1
    with factory() as session:
        rows = session.scalars(select(m.TelemetryRecord).order_by(m.TelemetryRecord.id)).all()
        assert [(r.device_id, r.seq) for r in rows] == [(a, 5), (a, 3), (b, 1), (a, 4)]
        row = rows[0]
        assert (row.model_name, row.model_version, row.count, row.errors) == ("digits", 1, 100, 0)
        assert row.latency_ms_p95 == pytest.approx(12.5) and row.latency_ms_p50 == pytest.approx(6.25)
        assert row.interval_s == 10 and row.sent_at == pytest.approx(first.sent_at)
        assert row.system == {} and row.queue is None  # no nulls kept in system, SQL NULL for none
        assert row.drift["confidence_hist"] == [1] * 10 and rows[2].model_name is None
        dev_a, dev_b = _device(session, "dev-a"), _device(session, "dev-b")
        assert dev_a.last_telemetry["seq"] == 5 and dev_a.last_telemetry["msg_id"] == first.msg_id
        assert (dev_a.model_name, dev_a.current_version, dev_a.slot, dev_a.online) == ("digits", 1, "a", True)
        assert dev_a.last_telemetry_at and dev_a.last_seen
        assert dev_b.last_telemetry["seq"] == 1 and dev_b.model_name is None  # no model: nothing claimed


def test_update_statuses_in_one_batch_apply_in_order_once_each(writer_registry, backend):
    """Statuses are written in one statement per batch; within it, a device's statuses still apply in the
    order they came, and a msg_id seen twice (in the batch, or before it) counts once."""
    from cloud_registry.ingest import IngestStats, apply_messages
    from tests.cloud_registry.helpers import update_status

    factory = writer_registry.factory
    downloading = update_status("dev-a", 1, update_id="u1", state="DOWNLOADING", to_version=2, from_version=1)
    succeeded = update_status("dev-a", 2, update_id="u1", state="SUCCEEDED", to_version=2, from_version=1)
    failed = update_status("dev-b", 1, update_id="u2", state="FAILED", to_version=2, from_version=1)
    stats = IngestStats()
    with factory() as session, session.begin():
        apply_messages(session, [downloading, succeeded, failed, succeeded], stats)
    assert (stats.stored, stats.duplicates) == (3, 1)
    with factory() as session, session.begin():  # redelivered: nothing new, nothing moved back
        apply_messages(session, [downloading], stats)
    assert (stats.stored, stats.duplicates) == (3, 2)
    with factory() as session:
        events = session.scalars(select(m.UpdateEvent).order_by(m.UpdateEvent.id)).all()
        assert [(e.update_id, e.state) for e in events] == [
            ("u1", "DOWNLOADING"),
            ("u1", "SUCCEEDED"),
            ("u2", "FAILED"),
        ]
        dev_a, dev_b = _device(session, "dev-a"), _device(session, "dev-b")
        assert (dev_a.current_version, dev_a.slot) == (2, "b") and dev_a.last_seen
        assert dev_b.current_version != 2


def test_two_writer_lanes_keep_each_devices_order_and_store_everything_once(writer_registry, backend):
    """Lanes share the load by device: every message stored and acknowledged once, and each device's
    statuses and newest telemetry as if one writer had taken them in order."""
    import time

    from cloud_registry.ingest import IngestWriter
    from tests.cloud_registry.helpers import update_status
    from tests.cloud_registry.test_ingest_poison import _enroll, _items

    if backend == "sqlite":
        pytest.skip("SQLite takes one writer at a time: the registry runs one lane there")
    acked: list[int] = []
    writer = IngestWriter(
        writer_registry.factory,
        batch_size=7,
        flush_s=0.01,
        ack=lambda items: acked.extend(mid for mid, _ in items),
        writers=2,
    )
    _enroll(writer_registry, "dev-d")  # dev-a and dev-d take different lanes
    messages = []
    for seq in range(1, 31):
        for name in ("dev-a", "dev-b", "dev-d"):
            messages.append(telemetry(name, seq))
    states = ["DOWNLOADING", "VERIFYING", "SUCCEEDED"]
    messages += [
        update_status("dev-a", 100 + i, update_id="u1", state=s, to_version=2, from_version=1)
        for i, s in enumerate(states)
    ]
    items = _items(messages)
    assert {id(writer._lane(i.topic)) for i in items} == {id(q) for q in writer.queues}  # both lanes used
    writer.start()
    try:
        for item in items:
            writer.put(item)
        deadline = time.monotonic() + 60
        while not writer.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        writer.stop()
    assert sorted(acked) == list(range(1, len(items) + 1))
    assert (writer.stats.stored, writer.stats.duplicates, writer.stats.dropped) == (93, 0, 0)
    with writer_registry.factory() as session:
        dev_a, dev_d = _device(session, "dev-a"), _device(session, "dev-d")
        assert dev_a.last_telemetry["seq"] == 30 and dev_d.last_telemetry["seq"] == 30
        events = session.scalars(select(m.UpdateEvent.state).order_by(m.UpdateEvent.id)).all()
        assert events == states


def test_a_devices_state_ends_as_its_last_message_in_the_batch_left_it(writer_registry, backend):
    """Telemetry is written in bulk, but not after a later message of the same device: a device that
    reported v1, then updated to v2 (or sent its Last Will) in the same batch ends at v2 (or offline)."""
    from cloud_registry.ingest import IngestStats, apply_messages
    from tests.cloud_registry.helpers import presence, update_status

    factory = writer_registry.factory
    stats = IngestStats()
    with factory() as session, session.begin():  # both devices known at v1, dev-b online in session 1
        apply_messages(session, [telemetry("dev-a", 1), presence("dev-b", 1), telemetry("dev-b", 1)], stats)
    succeeded = update_status("dev-a", 3, update_id="u1", state="SUCCEEDED", to_version=2, from_version=1)
    batch = [telemetry("dev-a", 2), telemetry("dev-b", 2), succeeded, presence("dev-b", 1, state="offline")]
    with factory() as session, session.begin():
        apply_messages(session, batch, stats)
    assert (stats.stored, stats.dropped) == (7, 0)
    with factory() as session:
        dev_a, dev_b = _device(session, "dev-a"), _device(session, "dev-b")
        assert (dev_a.current_version, dev_a.slot) == (2, "b")  # not the v1 its telemetry named before
        assert dev_a.last_telemetry["seq"] == 2
        assert dev_b.online is False and dev_b.last_telemetry["seq"] == 2
    # A rollback to the version the device was loaded at: the ORM row was read before the telemetry
    # moved it to v2 past the ORM, so it must be read again, or the write back to v1 is skipped.
    rolled_back = update_status("dev-a", 5, update_id="u2", state="ROLLED_BACK", to_version=3, from_version=2)
    with factory() as session, session.begin():
        apply_messages(session, [telemetry("dev-a", 4, version=3), rolled_back], stats)
    with factory() as session:
        assert _device(session, "dev-a").current_version == 2
