"""Database operations, keyword-only, one session passed in; callers own the transaction.

Here: API tokens, models, versions and aliases, and what each device should run (desired state).
The devices themselves (enrollment, records, revocation) are `cloud_registry.devices`; what they
report (presence, telemetry, update statuses, written in bulk) is `cloud_registry.reports`.

Anything that changes what a device should run returns the `Publication`s to
send once the transaction has committed (the retained desired message), so a
rolled-back transaction never publishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from cloud_registry import models as m
from cloud_registry.core.security import new_token, token_hash
from edgebundle.manifest import Manifest
from edgewire.commands import RollbackOrder
from edgewire.device_api import Paths
from edgewire.messages import DesiredModel, new_message_id
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
