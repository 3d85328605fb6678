"""Devices: enrollment (one-time tokens spent for a device token and an MQTT password), the device
records and their health, their telemetry as points, revocation, and the broker's user list.

Like `crud`, keyword-only functions with the session passed in; callers own the transaction.
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_registry import models as m
from cloud_registry.core.security import mosquitto_hash, new_token, token_hash
from cloud_registry.crud import Conflict, Invalid, NotFound, Publication, Refused
from edgewire.device_api import EnrollRequest
from registry_api import schemas


def create_enrollment_token(
    session: Session, *, body: schemas.EnrollmentTokenCreate, created_by: str, default_ttl_s: float
) -> tuple[m.EnrollmentToken, str]:
    secret = new_token("ede")
    now = time.time()
    row = m.EnrollmentToken(
        token_hash=token_hash(secret),
        group=body.group,
        tags=body.tags,
        name=body.name,
        created_at=now,
        expires_at=now + (body.ttl_s or default_ttl_s),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row, secret


def enroll_device(session: Session, *, request: EnrollRequest, fleet: str) -> tuple[m.Device, str, str]:
    """Spend a one-time token on a new device; (device, device token, MQTT password), secrets shown once."""
    try:
        request_tags = schemas.check_tags(request.tags)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    token = session.scalar(
        select(m.EnrollmentToken)
        .where(m.EnrollmentToken.token_hash == token_hash(request.token))
        .with_for_update()
    )
    now = time.time()
    if token is None or token.used_at is not None or token.expires_at < now:
        raise Refused("enrollment token is unknown, used or expired")  # one message: no oracle
    name = token.name or request.name
    if token.name and request.name and request.name != token.name:
        raise Refused(f"this enrollment token is for device {token.name!r}")
    if name is None:
        name = f"dev-{secrets.token_hex(5)}"
    if session.scalar(select(m.Device).where(m.Device.name == name)) is not None:
        raise Conflict(f"a device named {name!r} is enrolled already")
    device_token, mqtt_password = new_token("edd"), new_token("edm")
    device = m.Device(
        name=name,
        fleet=fleet,
        target=request.target,
        group=token.group,
        tags=sorted({*token.tags, *request_tags}),
        hardware={str(k)[:64]: str(v)[:256] for k, v in request.hardware.items()},
        token_hash=token_hash(device_token),
        mqtt_password_hash=mosquitto_hash(mqtt_password),
        enrolled_at=now,
    )
    session.add(device)
    session.flush()
    token.used_at, token.device_id = now, device.id
    return device, device_token, mqtt_password


def device_by_token(session: Session, *, token: str) -> m.Device | None:
    device = session.scalar(select(m.Device).where(m.Device.token_hash == token_hash(token)))
    return None if device is None or device.revoked_at is not None else device


# One array parameter, whatever the number of names: an IN list of a batch's 500 names was a new query
# text for psycopg to split and prepare on every batch (a tenth of the ingest writers' time).
_PG_ENROLLED = "SELECT id, name, fleet FROM devices WHERE name = ANY(%s) AND revoked_at IS NULL"


def enrolled_devices(session: Session, names: set[str]) -> dict[str, tuple[int, str]]:
    """Device name -> (id, fleet) for those of `names` that are enrolled and not revoked."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.connection().exec_driver_sql(_PG_ENROLLED, (list(names),))
    else:
        rows = session.execute(
            select(m.Device.id, m.Device.name, m.Device.fleet).where(
                m.Device.name.in_(names), m.Device.revoked_at.is_(None)
            )
        )
    return {name: (device_id, fleet) for device_id, name, fleet in rows}


def get_device(session: Session, *, name: str) -> m.Device:
    device = session.scalar(select(m.Device).where(m.Device.name == name))
    if device is None:
        raise NotFound(f"no device named {name!r}")
    return device


def list_devices(
    session: Session,
    *,
    target: str | None = None,
    group: str | None = None,
    tag: str | None = None,
    online: bool | None = None,
    include_revoked: bool = False,
) -> list[m.Device]:
    query = select(m.Device).order_by(m.Device.name)
    if target:
        query = query.where(m.Device.target == target)
    if group:
        query = query.where(m.Device.group == group)
    if online is not None:
        query = query.where(m.Device.online.is_(online))
    if not include_revoked:
        query = query.where(m.Device.revoked_at.is_(None))
    devices = list(session.scalars(query))
    return [d for d in devices if tag in (d.tags or [])] if tag else devices


def device_health(device: m.Device, *, now: float, presence_timeout_s: float) -> str:
    if device.revoked_at is not None:
        return "revoked"
    if not device.online or (device.last_seen is not None and now - device.last_seen > presence_timeout_s):
        return "offline"
    last = device.last_telemetry or {}
    inference = last.get("inference") or {}
    if device.last_update_state in ("FAILED", "ROLLED_BACK", "REJECTED"):
        return "degraded"
    if inference.get("errors"):
        return "degraded"
    return "ok" if last else "unknown"


def device_info(device: m.Device, *, presence_timeout_s: float) -> schemas.DeviceInfo:
    now = time.time()
    return schemas.DeviceInfo(
        name=device.name,
        fleet=device.fleet,
        target=device.target,
        group=device.group,
        tags=device.tags or [],
        hardware=device.hardware or {},
        enrolled_at=device.enrolled_at,
        revoked=device.revoked_at is not None,
        online=device.online
        and device_health(device, now=now, presence_timeout_s=presence_timeout_s) != "offline",
        last_seen=device.last_seen,
        agent_version=device.agent_version,
        model=schemas.DeviceModel(name=device.model_name, version=device.current_version, slot=device.slot),
        desired_version=(device.desired or {}).get("version"),
        last_update_state=device.last_update_state,
        health=device_health(device, now=now, presence_timeout_s=presence_timeout_s),
        last_telemetry_at=device.last_telemetry_at,
        last_telemetry=device.last_telemetry,
    )


def update_device(session: Session, *, name: str, body: schemas.DeviceUpdate) -> m.Device:
    device = get_device(session, name=name)
    if "group" in body.model_fields_set:
        device.group = body.group
    if body.tags is not None:
        device.tags = body.tags
    return device


def revoke_device(session: Session, *, name: str) -> tuple[m.Device, list[Publication]]:
    device = get_device(session, name=name)
    if device.revoked_at is None:
        from cloud_registry import webhooks

        webhooks.enqueue(
            session,
            event="device.revoked",
            text=f"Device {device.name} ({device.target}, group {device.group or '-'}) was revoked",
            data={"device": device.name, "target": device.target, "group": device.group},
        )
    device.revoked_at = device.revoked_at or time.time()
    device.desired = None
    return device, [Publication(device.fleet, device.name, None)]


def device_telemetry(session: Session, *, device: m.Device, limit: int = 200) -> list[m.TelemetryRecord]:
    rows = session.scalars(
        select(m.TelemetryRecord)
        .where(m.TelemetryRecord.device_id == device.id)
        .order_by(m.TelemetryRecord.received_at.desc(), m.TelemetryRecord.seq.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


def device_points(session: Session, *, device: m.Device, limit: int = 200) -> list[schemas.TelemetryPoint]:
    """A device's newest `limit` telemetry points, oldest first: raw rows, and before them, when fewer
    raw rows are kept than asked for, the hourly aggregates of telemetry past its retention."""
    points = [telemetry_point(row) for row in device_telemetry(session, device=device, limit=limit)]
    if len(points) >= limit:
        return points
    h = m.TelemetryHourly
    query = select(h).where(h.device_id == device.id)
    if points:
        query = query.where(h.hour < points[0].received_at)
    rows = session.scalars(query.order_by(h.hour.desc(), h.model_version.desc()).limit(limit - len(points)))
    return [hourly_point(row) for row in reversed(list(rows))] + points


def hourly_point(row: m.TelemetryHourly) -> schemas.TelemetryPoint:
    reports = max(1, row.reports)
    return schemas.TelemetryPoint(
        received_at=row.hour,
        sent_at=row.hour,
        seq=0,
        model_version=row.model_version or None,
        count=round(row.inferences / reports),
        errors=round(row.errors / reports),
        latency_ms_p50=row.p50_weighted / row.p50_count if row.p50_count else None,
        latency_ms_p95=row.p95_weighted / row.p95_count if row.p95_count else None,
        throughput_per_s=row.inferences / row.seconds if row.seconds else 0.0,
        cpu_percent=row.cpu_percent_sum / row.system_reports if row.system_reports else None,
        memory_percent=row.memory_percent_sum / row.system_reports if row.system_reports else None,
        temperature_c=None,
        reports=reports,
    )


def telemetry_point(row: m.TelemetryRecord) -> schemas.TelemetryPoint:
    system = row.system or {}
    return schemas.TelemetryPoint(
        received_at=row.received_at,
        sent_at=row.sent_at,
        seq=row.seq,
        model_version=row.model_version,
        count=row.count,
        errors=row.errors,
        latency_ms_p50=row.latency_ms_p50,
        latency_ms_p95=row.latency_ms_p95,
        throughput_per_s=row.throughput_per_s,
        cpu_percent=system.get("cpu_percent"),
        memory_percent=system.get("memory_percent"),
        temperature_c=system.get("temperature_c"),
    )


def broker_users(session: Session) -> list[tuple[str, str]]:
    rows = session.execute(
        select(m.Device.name, m.Device.mqtt_password_hash).where(m.Device.revoked_at.is_(None))
    )
    return [(name, digest) for name, digest in rows]
