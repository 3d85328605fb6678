"""What devices report, written in bulk: presence, telemetry batches and update statuses.

The MQTT ingest (`cloud_registry.ingest`) hands these functions whole batches from many devices; each
writes them in a few statements (a multi-row insert that skips duplicates by their message id, the
devices' last-telemetry columns in one UPDATE), so a 10,000-device fleet's reports cost a handful of
queries per batch, not one per message. Like `crud`, every function takes the session and leaves the
transaction to its caller.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from cloud_registry import models as m
from edgewire.messages import Presence, Telemetry, UpdateStatus


def apply_presence(session: Session, *, device: m.Device, presence: Presence) -> bool:
    """Take a presence message unless an older session sent it (a late Last Will); True when applied."""
    if presence.session < device.presence_session:
        return False
    device.presence_session = presence.session
    device.online = presence.state == "online"
    device.last_seen = max(device.last_seen or 0.0, time.time())
    if presence.agent_version:
        device.agent_version = presence.agent_version[:64]
    if presence.model is not None:
        device.model_name, device.current_version = presence.model.name, presence.model.version
        device.slot = presence.model.slot
    return True


def telemetry_row(device_id: int, message: Telemetry, received_at: float) -> dict[str, Any]:
    model = message.model
    inference = message.inference
    return {
        "device_id": device_id,
        "msg_id": message.msg_id,
        "seq": message.seq,
        "sent_at": message.sent_at,
        "received_at": received_at,
        "interval_s": message.interval_s,
        "model_name": model.name if model else None,
        "model_version": model.version if model else None,
        "count": inference.count,
        "errors": inference.errors,
        "latency_ms_p50": inference.latency_ms_p50,
        "latency_ms_p95": inference.latency_ms_p95,
        "throughput_per_s": inference.throughput_per_s,
        "system": message.system.model_dump(mode="json", exclude_none=True),
        "drift": message.drift.model_dump(mode="json") if message.drift else None,
        "queue": message.queue.model_dump(mode="json") if message.queue else None,
    }


def insert_ignoring_conflicts(
    session: Session, table: Any, rows: list[dict[str, Any]], columns: list[str]
) -> int:
    """INSERT rows, skipping those that collide on the unique `columns`; count inserted."""
    return len(inserted_keys(session, table, rows, columns))


def inserted_keys(session: Session, table: Any, rows: list[dict[str, Any]], columns: list[str]) -> list:
    """INSERT rows, skipping those that collide on the unique `columns`; the first column's value of
    each row that went in (a key of its own only when that column alone is unique, as msg_id is)."""
    return [key[0] for key in inserted_key_tuples(session, table, rows, columns)]


def inserted_key_tuples(
    session: Session, table: Any, rows: list[dict[str, Any]], columns: list[str]
) -> list[tuple[Any, ...]]:
    """INSERT rows, skipping those that collide on the unique `columns`; the `columns` values of each row
    that went in (RETURNING), so a caller knows which of its rows are its own and which another
    replica's write already held."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = (
        insert(table)
        .on_conflict_do_nothing(index_elements=columns)
        .returning(*(getattr(table, column) for column in columns))
    )
    return [tuple(row) for row in session.execute(statement, rows).all()]


def insert_ignoring_duplicates(session: Session, table: Any, rows: list[dict[str, Any]]) -> int:
    """INSERT rows, skipping those whose msg_id exists (QoS 1 redelivery, agent resends); count inserted."""
    return insert_ignoring_conflicts(session, table, rows, ["msg_id"])


# One statement per batch on PostgreSQL: the batch travels as one JSON array of the messages as the wire
# has them, parsed once as jsonb (a fixed query text, nothing re-parsed or escaped per row), duplicates fall on the msg_id key,
# and RETURNING says which went in.
_PG_TELEMETRY_INSERT = """
INSERT INTO telemetry (device_id, msg_id, seq, sent_at, received_at, interval_s, model_name, model_version,
                       count, errors, latency_ms_p50, latency_ms_p95, throughput_per_s, system, drift, queue)
SELECT (r->>'d')::integer, t->>'msg_id', (t->>'seq')::bigint, (t->>'sent_at')::float8, %s,
       (t->>'interval_s')::float8, t->'model'->>'name', (t->'model'->>'version')::integer,
       (t->'inference'->>'count')::integer, (t->'inference'->>'errors')::integer,
       (t->'inference'->>'latency_ms_p50')::float8, (t->'inference'->>'latency_ms_p95')::float8,
       (t->'inference'->>'throughput_per_s')::float8, jsonb_strip_nulls(t->'system')::json,
       CASE WHEN jsonb_typeof(t->'drift') = 'object' THEN (t->'drift')::json END,
       CASE WHEN jsonb_typeof(t->'queue') = 'object' THEN (t->'queue')::json END
FROM jsonb_array_elements(%s::jsonb) AS r, LATERAL (SELECT r->'m' AS t) AS m
ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id
"""


def _batch_json(items: list[tuple[int, Telemetry]] | Any, wire: dict[str, str]) -> str:
    """[{"d": device id, "m": the message}, ...], each message in its wire form: `wire`, msg_id -> pydantic's
    own JSON of it, made once for the insert and the devices' update."""
    return (
        "["
        + ",".join(f'{{"d":{device_id},"m":{wire[message.msg_id]}}}' for device_id, message in items)
        + "]"
    )


def _insert_telemetry_postgresql(
    session: Session, items: list[tuple[int, Telemetry]], received_at: float, wire: dict[str, str]
) -> set[str]:
    result = session.connection().exec_driver_sql(
        _PG_TELEMETRY_INSERT, (received_at, _batch_json(items, wire))
    )
    return {row[0] for row in result}


def _insert_telemetry_generic(
    session: Session, items: list[tuple[int, Telemetry]], received_at: float
) -> set[str]:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = (
        insert(m.TelemetryRecord)
        .on_conflict_do_nothing(index_elements=["msg_id"])
        .returning(m.TelemetryRecord.msg_id)
    )
    rows = [telemetry_row(device_id, message, received_at) for device_id, message in items]
    return set(session.execute(statement, rows).scalars())


# The newest telemetry per device, for many devices in one statement; a message older (by seq) than
# what the device last sent is not taken, and one without a slot keeps the device's.
_PG_LAST_TELEMETRY = """
UPDATE devices AS d
SET last_telemetry = u.t::json, last_telemetry_at = %s, last_seen = %s, online = true,
    model_name = COALESCE(u.t->'model'->>'name', d.model_name),
    current_version = COALESCE((u.t->'model'->>'version')::integer, d.current_version),
    slot = COALESCE(u.t->'model'->>'slot', d.slot)
FROM (SELECT (r->>'d')::integer AS id, r->'m' AS t FROM jsonb_array_elements(%s::jsonb) AS r) AS u
WHERE d.id = u.id AND COALESCE((d.last_telemetry->>'seq')::bigint, -1) <= (u.t->>'seq')::bigint
"""


_PG_LOCK_DEVICES = "SELECT id FROM devices WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"


def _record_last_telemetry(
    session: Session, newest: dict[int, Telemetry], now: float, wire: dict[str, str] | None
) -> None:
    """`wire`: the messages' JSON the insert sent (PostgreSQL), None on SQLite."""
    if wire is not None:
        connection = session.connection()
        # Replicas sharing a subscription update the same devices: take their rows in one order (by id),
        # so two batches wait for each other instead of deadlocking (NO KEY: the telemetry rows' foreign
        # key share-locks the same devices, and this lock leaves that alone).
        connection.exec_driver_sql(_PG_LOCK_DEVICES, (sorted(newest),))
        connection.exec_driver_sql(_PG_LAST_TELEMETRY, (now, now, _batch_json(newest.items(), wire)))
        return
    known = dict(
        session.execute(
            select(m.Device.id, m.Device.last_telemetry["seq"].as_integer()).where(
                m.Device.id.in_(list(newest))
            )
        ).all()
    )
    table = m.Device.__table__
    rows = [
        {
            "b_id": device_id,
            "b_last_telemetry": message.model_dump(mode="json"),
            "b_model_name": message.model.name if message.model else None,
            "b_current_version": message.model.version if message.model else None,
            "b_slot": message.model.slot if message.model else None,
        }
        for device_id, message in newest.items()
        if message.seq >= (known.get(device_id) or 0)
    ]
    if rows:
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(
                last_telemetry=bindparam("b_last_telemetry", type_=table.c.last_telemetry.type),
                last_telemetry_at=now,
                last_seen=now,
                online=True,  # it just spoke (a Last Will afterwards still marks it offline)
                model_name=func.coalesce(
                    bindparam("b_model_name", type_=table.c.model_name.type), table.c.model_name
                ),
                current_version=func.coalesce(
                    bindparam("b_current_version", type_=table.c.current_version.type),
                    table.c.current_version,
                ),
                slot=func.coalesce(bindparam("b_slot", type_=table.c.slot.type), table.c.slot),
            )
        )
        session.connection().execute(statement, rows)


def record_telemetry(session: Session, *, items: list[tuple[int, Telemetry]]) -> int:
    """Store a batch of telemetry (device id, message), dropping repeated msg_ids; count inserted.

    The newest message per device becomes its `last_telemetry`, in one UPDATE statement run for many rows;
    no ORM object is made per message.
    """
    now = time.time()
    session.flush()  # what the batch changed on devices before (presence, updates) goes first, as before
    unique: dict[str, tuple[int, Telemetry]] = {}
    for device_id, message in items:
        unique.setdefault(message.msg_id, (device_id, message))
    fresh_items = list(unique.values())
    wire = None
    if session.get_bind().dialect.name == "postgresql":
        wire = {message.msg_id: message.model_dump_json() for _, message in fresh_items}
        inserted = _insert_telemetry_postgresql(session, fresh_items, now, wire)
    else:
        inserted = _insert_telemetry_generic(session, fresh_items, now)
    newest: dict[int, Telemetry] = {}
    for device_id, message in fresh_items:
        if message.msg_id in inserted and (device_id not in newest or message.seq > newest[device_id].seq):
            newest[device_id] = message
    if newest:
        _record_last_telemetry(session, newest, now, wire)
    return len(inserted)


# Rollout-device states a device's update status moves to; final ones never move back.
UPDATE_TO_ROLLOUT_STATE = {
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "REJECTED": "failed",
    "ROLLED_BACK": "rolled_back",
}
FINAL_ROLLOUT_DEVICE_STATES = frozenset({"succeeded", "failed", "rolled_back", "reverted", "revert_failed"})


def record_updates(session: Session, items: list[tuple[m.Device, UpdateStatus]]) -> int:
    """Store update statuses (once per msg_id) and move each device and its rollout entry on, in order.

    One INSERT for the batch and one SELECT for the rollout entries it touches: one status at a time
    took three round trips each, which held a 5,000-device wave's last statuses back by seconds.
    Returns how many were new; a msg_id seen before (or twice in the batch) changes nothing.
    """
    if not items:
        return 0
    now = time.time()
    rows = [
        {
            "device_id": device.id,
            "msg_id": message.msg_id,
            "seq": message.seq,
            "sent_at": message.sent_at,
            "received_at": now,
            "update_id": message.update_id,
            "rollout_id": message.rollout_id,
            "model": message.model,
            "from_version": message.from_version,
            "to_version": message.to_version,
            "state": message.state,
            "reason": message.reason,
            "slot": message.slot,
        }
        for device, message in items
    ]
    new = set(inserted_keys(session, m.UpdateEvent, rows, ["msg_id"]))
    entries = {
        (entry.device_id, entry.update_id): entry
        for entry in session.scalars(
            select(m.RolloutDevice).where(
                m.RolloutDevice.update_id.in_(sorted({message.update_id for _, message in items}))
            )
        )
    }
    stored = 0
    for device, message in items:
        if message.msg_id not in new:
            continue
        new.discard(message.msg_id)  # a second copy in the same batch is a duplicate too
        stored += 1
        _apply_update(device, entries.get((device.id, message.update_id)), message, now)
    return stored


def _apply_update(device: m.Device, entry: m.RolloutDevice | None, message: UpdateStatus, now: float) -> None:
    device.last_seen = now
    desired = device.desired or {}
    if desired.get("update_id") == message.update_id:
        device.last_update_state = message.state
    if message.state == "SUCCEEDED":
        device.model_name, device.current_version = message.model, message.to_version
        device.slot = message.slot or device.slot
    elif message.state == "ROLLED_BACK" and message.from_version is not None:
        device.model_name, device.current_version = message.model, message.from_version
    if entry is not None and entry.state not in FINAL_ROLLOUT_DEVICE_STATES:
        if entry.state == "reverting":
            if message.state == "SUCCEEDED":
                entry.state, entry.finished_at = "reverted", now
            elif message.state in UPDATE_TO_ROLLOUT_STATE:
                entry.state, entry.finished_at, entry.reason = "revert_failed", now, message.reason
        elif message.state in UPDATE_TO_ROLLOUT_STATE:
            entry.state, entry.finished_at = UPDATE_TO_ROLLOUT_STATE[message.state], now
            entry.reason = message.reason
        else:
            entry.state = "updating"
