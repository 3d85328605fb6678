"""Database operations, keyword-only, one session passed in; callers own the transaction.

Anything that changes what a device should run returns the `Publication`s to
send once the transaction has committed (the retained desired message), so a
rolled-back transaction never publishes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, selectinload

from cloud_registry import models as m
from cloud_registry.core.security import mosquitto_hash, new_token, token_hash
from edgebundle.manifest import Manifest
from edgewire.commands import RollbackOrder
from edgewire.device_api import EnrollRequest, Paths
from edgewire.messages import DesiredModel, Presence, Telemetry, UpdateStatus, new_message_id
from registry_api import schemas


class NotFound(LookupError):
    """The thing asked for does not exist (404)."""


class Conflict(ValueError):
    """The request contradicts what is recorded (409)."""


class Invalid(ValueError):
    """A value from the client that the schema could not rule out but the registry cannot take (422)."""


class Refused(PermissionError):
    """The request is understood but not allowed (403), e.g. a used enrollment token."""


@dataclass(frozen=True)
class Publication:
    """A retained desired message to publish after commit; payload None clears it."""

    fleet: str
    device: str
    payload: bytes | None


# --------------------------------------------------------------------------- API tokens


def create_api_token(
    session: Session, *, name: str, role: str, token: str | None = None
) -> tuple[m.ApiToken, str]:
    if session.scalar(select(m.ApiToken).where(m.ApiToken.name == name)) is not None:
        raise Conflict(f"a token named {name!r} exists")
    secret = token or new_token("edr")
    row = m.ApiToken(name=name, role=role, token_hash=token_hash(secret), created_at=time.time())
    session.add(row)
    session.flush()
    return row, secret


def ensure_bootstrap_token(session: Session, *, token: str) -> None:
    """The admin token from the settings exists (idempotent; several replicas may race, the DB decides)."""
    digest = token_hash(token)
    if session.scalar(select(m.ApiToken).where(m.ApiToken.token_hash == digest)) is None:
        name = "bootstrap-admin"
        if session.scalar(select(m.ApiToken).where(m.ApiToken.name == name)) is not None:
            name = f"bootstrap-admin-{digest[:8]}"
        session.add(m.ApiToken(name=name, role="admin", token_hash=digest, created_at=time.time()))


def token_by_secret(session: Session, *, token: str) -> m.ApiToken | None:
    row = session.scalar(select(m.ApiToken).where(m.ApiToken.token_hash == token_hash(token)))
    return None if row is None or row.revoked_at is not None else row


def list_api_tokens(session: Session) -> list[m.ApiToken]:
    return list(session.scalars(select(m.ApiToken).order_by(m.ApiToken.name)))


def revoke_api_token(session: Session, *, name: str) -> m.ApiToken:
    row = session.scalar(select(m.ApiToken).where(m.ApiToken.name == name))
    if row is None:
        raise NotFound(f"no token named {name!r}")
    row.revoked_at = row.revoked_at or time.time()
    return row


# --------------------------------------------------------------------------- models and bundles


def register_artifact(
    session: Session, *, manifest: Manifest, archive_sha256: str, archive_size: int, uploaded_by: str
) -> tuple[m.Artifact, bool]:
    """Record a verified bundle as the artifact of (model, version, target); (artifact, created)."""
    now = time.time()
    model = session.scalar(select(m.Model).where(m.Model.name == manifest.name))
    if model is None:
        model = m.Model(name=manifest.name, created_at=now)
        session.add(model)
        session.flush()
    version = session.scalar(
        select(m.ModelVersion).where(
            m.ModelVersion.model_id == model.id, m.ModelVersion.version == manifest.version
        )
    )
    if version is None:
        lineage = manifest.lineage
        version = m.ModelVersion(
            model_id=model.id,
            version=manifest.version,
            created_at=now,
            source_kind=manifest.source.kind,
            source_sha256=manifest.source.sha256,
            parent_version=lineage.parent_version,
            training_data=lineage.training_data,
            data_snapshots=dict(lineage.data_snapshots),
            trigger=lineage.trigger,
        )
        session.add(version)
        session.flush()
    elif version.source_sha256 != manifest.source.sha256:
        raise Conflict(
            f"{manifest.name} v{manifest.version} was built from source {version.source_sha256[:12]}…, "
            f"this bundle from {manifest.source.sha256[:12]}…; a new source needs a new version"
        )
    existing = session.scalar(
        select(m.Artifact).where(m.Artifact.version_id == version.id, m.Artifact.target == manifest.target)
    )
    if existing is not None:
        if existing.archive_sha256 == archive_sha256:
            return existing, False
        raise Conflict(
            f"{manifest.name} v{manifest.version} already has a different bundle for {manifest.target}; "
            "versions are immutable, push a new version"
        )
    if session.get(m.Blob, archive_sha256) is None:
        session.add(m.Blob(sha256=archive_sha256, size=archive_size, created_at=now))
        session.flush()
    report = manifest.validation
    bench = manifest.benchmark
    metric = report.metric if report else None
    artifact = m.Artifact(
        version_id=version.id,
        target=manifest.target,
        runtime=manifest.runtime,
        precision=manifest.precision,
        archive_sha256=archive_sha256,
        archive_size=archive_size,
        key_id=manifest.key_id or "",
        manifest=manifest.model_dump(mode="json"),
        metric=metric,
        metric_value=report.artifact.get(metric) if report and metric else None,
        metric_reference=report.reference.get(metric) if report and metric else None,
        drop_points=report.drop_points if report else None,
        validation_passed=report.passed if report else None,
        latency_ms_p50=bench.latency_ms_p50 if bench else None,
        latency_ms_p95=bench.latency_ms_p95 if bench else None,
        uploaded_at=now,
        uploaded_by=uploaded_by,
    )
    session.add(artifact)
    session.flush()
    return artifact, True


def get_model(session: Session, *, name: str) -> m.Model:
    model = session.scalar(
        select(m.Model)
        .where(m.Model.name == name)
        .options(
            selectinload(m.Model.versions).selectinload(m.ModelVersion.artifacts),
            selectinload(m.Model.aliases),
        )
    )
    if model is None:
        raise NotFound(f"no model named {name!r}")
    return model


def get_version(session: Session, *, model: str, version: int) -> m.ModelVersion:
    row = session.scalar(
        select(m.ModelVersion)
        .join(m.Model)
        .where(m.Model.name == model, m.ModelVersion.version == version)
        .options(selectinload(m.ModelVersion.artifacts))
    )
    if row is None:
        raise NotFound(f"model {model!r} has no version {version}")
    return row


def alias_map(model: m.Model) -> dict[str, int]:
    return {a.alias: a.version.version for a in sorted(model.aliases, key=lambda a: a.alias)}


def model_summary(model: m.Model) -> schemas.ModelSummary:
    return schemas.ModelSummary(
        name=model.name,
        created_at=model.created_at,
        latest_version=max((v.version for v in model.versions), default=None),
        versions=len(model.versions),
        aliases=alias_map(model),
    )


def list_models(session: Session) -> list[m.Model]:
    return list(
        session.scalars(
            select(m.Model)
            .order_by(m.Model.name)
            .options(selectinload(m.Model.versions), selectinload(m.Model.aliases))
        )
    )


def version_info(version: m.ModelVersion, model: m.Model) -> schemas.VersionInfo:
    return schemas.VersionInfo(
        model=model.name,
        version=version.version,
        created_at=version.created_at,
        aliases=sorted(a.alias for a in model.aliases if a.version_id == version.id),
        lineage=schemas.Lineage(
            source_kind=version.source_kind,
            source_sha256=version.source_sha256,
            parent_version=version.parent_version,
            training_data=version.training_data,
            data_snapshots=version.data_snapshots or {},
            trigger=version.trigger,
        ),
        artifacts=[schemas.ArtifactInfo.model_validate(a, from_attributes=True) for a in version.artifacts],
    )


def set_alias(session: Session, *, model: str, alias: str, version: int) -> m.Alias:
    row = get_version(session, model=model, version=version)
    existing = session.scalar(select(m.Alias).where(m.Alias.model_id == row.model_id, m.Alias.alias == alias))
    if existing is None:
        existing = m.Alias(model_id=row.model_id, alias=alias, version_id=row.id, updated_at=time.time())
        session.add(existing)
    else:
        existing.version_id, existing.updated_at = row.id, time.time()
    session.flush()
    return existing


def resolve_alias(session: Session, *, model: str, alias: str) -> m.ModelVersion:
    row = session.scalar(select(m.Alias).join(m.Model).where(m.Model.name == model, m.Alias.alias == alias))
    if row is None:
        raise NotFound(f"model {model!r} has no alias {alias!r}")
    return get_version(session, model=model, version=row.version.version)


def delete_alias(session: Session, *, model: str, alias: str) -> None:
    row = session.scalar(select(m.Alias).join(m.Model).where(m.Model.name == model, m.Alias.alias == alias))
    if row is None:
        raise NotFound(f"model {model!r} has no alias {alias!r}")
    session.delete(row)


# --------------------------------------------------------------------------- enrollment and devices


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


# --------------------------------------------------------------------------- desired state


def bundle_url(public_url: str, archive_sha256: str) -> str:
    return f"{public_url.rstrip('/')}{Paths.bundle_for(archive_sha256)}"


def artifact_for(version: m.ModelVersion, target: str) -> m.Artifact | None:
    return next((a for a in version.artifacts if a.target == target), None)


def set_desired(
    session: Session,
    *,
    device: m.Device,
    model: str,
    artifact: m.Artifact,
    version: int,
    update_id: str,
    public_url: str,
    rollout_id: int | None = None,
    rollback: RollbackOrder | None = None,
) -> Publication:
    message = DesiredModel(
        msg_id=new_message_id(),
        update_id=update_id,
        issued_at=time.time(),
        model=model,
        version=version,
        target=artifact.target,
        archive_sha256=artifact.archive_sha256,
        archive_size=artifact.archive_size,
        url=bundle_url(public_url, artifact.archive_sha256),
        rollout_id=rollout_id,
        rollback=rollback,
    )
    device.desired = message.model_dump(mode="json")
    session.add(
        m.DesiredRecord(
            device_id=device.id,
            at=message.issued_at,
            update_id=update_id,
            model=model,
            version=version,
            archive_sha256=artifact.archive_sha256,
            rollout_id=rollout_id,
            rollback=rollback is not None,
        )
    )
    return Publication(device.fleet, device.name, message.model_dump_json().encode())


def may_download(session: Session, *, device: m.Device, archive_sha256: str) -> bool:
    """A device may fetch an archive it was told to run, now or before (a rollback target, a retry)."""
    if (device.desired or {}).get("archive_sha256") == archive_sha256:
        return True
    return (
        session.scalar(
            select(func.count())
            .select_from(m.DesiredRecord)
            .where(m.DesiredRecord.device_id == device.id, m.DesiredRecord.archive_sha256 == archive_sha256)
        )
        or 0
    ) > 0


def all_desired(session: Session) -> list[Publication]:
    rows = session.execute(
        select(m.Device.fleet, m.Device.name, m.Device.desired).where(
            m.Device.revoked_at.is_(None), m.Device.desired.is_not(None)
        )
    )
    import json

    return [
        Publication(fleet, name, json.dumps(desired).encode()) for fleet, name, desired in rows if desired
    ]


# --------------------------------------------------------------------------- what devices report


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
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = (
        insert(table).on_conflict_do_nothing(index_elements=columns).returning(getattr(table, columns[0]))
    )
    return list(session.scalars(statement, rows).all())


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
