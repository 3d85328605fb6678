"""Database tables (SQLAlchemy 2 declarative). Times are unix seconds, as on the wire.

The schema itself is created by Alembic migrations (cloud_registry/migrations); a
change here comes with a new migration, checked by tests/cloud_registry/test_storage_and_schema.py.
Over 400 lines on purpose: every table is here, declarations only, so that one file is what a
migration is compared against.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from edgebundle.manifest import Manifest


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, default=None)


class Blob(Base):
    """One stored archive, by content: the same bytes are stored once whoever uploads them."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version", cascade="all, delete-orphan"
    )
    aliases: Mapped[list[Alias]] = relationship(back_populates="model", cascade="all, delete-orphan")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    source_kind: Mapped[str] = mapped_column(String(64))
    source_sha256: Mapped[str] = mapped_column(String(64))
    parent_version: Mapped[int | None] = mapped_column(Integer, default=None)
    training_data: Mapped[str | None] = mapped_column(Text, default=None)
    data_snapshots: Mapped[dict[str, Any]] = mapped_column(default=dict)
    trigger: Mapped[str | None] = mapped_column(String(128), default=None)
    model: Mapped[Model] = relationship(back_populates="versions")
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="version", order_by="Artifact.target", cascade="all, delete-orphan"
    )


class Artifact(Base):
    """One signed bundle of a version, for one target."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("version_id", "target"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(8))
    archive_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    archive_size: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(16))
    manifest: Mapped[dict[str, Any]] = mapped_column()
    metric: Mapped[str | None] = mapped_column(String(32), default=None)
    metric_value: Mapped[float | None] = mapped_column(Float, default=None)
    metric_reference: Mapped[float | None] = mapped_column(Float, default=None)
    drop_points: Mapped[float | None] = mapped_column(Float, default=None)
    validation_passed: Mapped[bool | None] = mapped_column(Boolean, default=None)
    latency_ms_p50: Mapped[float | None] = mapped_column(Float, default=None)
    latency_ms_p95: Mapped[float | None] = mapped_column(Float, default=None)
    uploaded_at: Mapped[float] = mapped_column(Float)

    def bundle_manifest(self) -> Manifest:
        """The stored manifest through edgebundle's model (verified when the bundle was uploaded)."""
        return Manifest.model_validate(self.manifest)

    uploaded_by: Mapped[str] = mapped_column(String(64))
    version: Mapped[ModelVersion] = relationship(back_populates="artifacts")


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    updated_at: Mapped[float] = mapped_column(Float)
    model: Mapped[Model] = relationship(back_populates="aliases")
    version: Mapped[ModelVersion] = relationship()


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    group: Mapped[str | None] = mapped_column(String(64), default=None)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    name: Mapped[str | None] = mapped_column(String(63), default=None)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[float | None] = mapped_column(Float, default=None)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"), default=None)


# Every telemetry message rewrites its device's row (last_telemetry, last_seen): pages left half empty let
# PostgreSQL put the new version beside the old one (a HOT update, no index touched). Measured at 500
# messages a batch: 31 us of PostgreSQL CPU a message for that update packed full, 24 us half full.
DEVICES_FILLFACTOR = 50


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = ({"postgresql_with": {"fillfactor": DEVICES_FILLFACTOR}},)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    fleet: Mapped[str] = mapped_column(String(63))
    target: Mapped[str] = mapped_column(String(64))
    group: Mapped[str | None] = mapped_column(String(64), default=None)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    hardware: Mapped[dict[str, Any]] = mapped_column(default=dict)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    mqtt_password_hash: Mapped[str] = mapped_column(String(256))
    enrolled_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, default=None)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    presence_session: Mapped[int] = mapped_column(Integer, default=0)
    last_seen: Mapped[float | None] = mapped_column(Float, default=None)
    agent_version: Mapped[str | None] = mapped_column(String(64), default=None)
    model_name: Mapped[str | None] = mapped_column(String(128), default=None)
    current_version: Mapped[int | None] = mapped_column(Integer, default=None)
    slot: Mapped[str | None] = mapped_column(String(1), default=None)
    desired: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    last_update_state: Mapped[str | None] = mapped_column(String(16), default=None)
    last_telemetry_at: Mapped[float | None] = mapped_column(Float, default=None)
    last_telemetry: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class DesiredRecord(Base):
    """Every desired state ever given to a device: its history, and the archives it may fetch."""

    __tablename__ = "desired_records"
    __table_args__ = (Index("ix_desired_device_sha", "device_id", "archive_sha256"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[float] = mapped_column(Float)
    update_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    archive_sha256: Mapped[str] = mapped_column(String(64))
    rollout_id: Mapped[int | None] = mapped_column(Integer, default=None)
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)


class TelemetryRecord(Base):
    """One telemetry message as it came, kept for `telemetry_retention_s`, then rolled up (TelemetryHourly)."""

    __tablename__ = "telemetry"
    __table_args__ = (
        Index("ix_telemetry_device_time", "device_id", "received_at"),
        Index("ix_telemetry_received_at", "received_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    msg_id: Mapped[str] = mapped_column(String(32), unique=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    interval_s: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str | None] = mapped_column(String(128), default=None)
    model_version: Mapped[int | None] = mapped_column(Integer, default=None)
    count: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    latency_ms_p50: Mapped[float | None] = mapped_column(Float, default=None)
    latency_ms_p95: Mapped[float | None] = mapped_column(Float, default=None)
    throughput_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    system: Mapped[dict[str, Any]] = mapped_column(default=dict)
    drift: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    queue: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class TelemetryHourly(Base):
    """A device's telemetry of one hour on one model version, added up (cloud_registry.retention).

    `model_name` "" and `model_version` 0 stand for telemetry without a model, so the key is unique."""

    __tablename__ = "telemetry_hourly"
    __table_args__ = (
        UniqueConstraint("device_id", "model_name", "model_version", "hour"),
        Index("ix_telemetry_hourly_hour", "hour"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    hour: Mapped[int] = mapped_column(BigInteger, doc="Unix seconds of the hour's start (received_at).")
    reports: Mapped[int] = mapped_column(BigInteger, doc="Raw telemetry rows added up.")
    seconds: Mapped[float] = mapped_column(Float, doc="Sum of their reporting intervals.")
    inferences: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    p50_weighted: Mapped[float] = mapped_column(Float, doc="Sum of count * p50 where a p50 was reported.")
    p50_count: Mapped[int] = mapped_column(BigInteger)
    p95_weighted: Mapped[float] = mapped_column(Float, doc="Sum of count * p95 where a p95 was reported.")
    p95_count: Mapped[int] = mapped_column(BigInteger)
    cpu_percent_sum: Mapped[float] = mapped_column(Float, default=0.0)
    memory_percent_sum: Mapped[float] = mapped_column(Float, default=0.0)
    system_reports: Mapped[int] = mapped_column(BigInteger, default=0, doc="Reports with a cpu_percent.")
    confidence_hist: Mapped[list[Any] | None] = mapped_column(JSON, default=None)


class UpdateEvent(Base):
    __tablename__ = "update_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    msg_id: Mapped[str] = mapped_column(String(32), unique=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    update_id: Mapped[str] = mapped_column(String(64), index=True)
    rollout_id: Mapped[int | None] = mapped_column(Integer, default=None)
    model: Mapped[str] = mapped_column(String(128))
    from_version: Mapped[int | None] = mapped_column(Integer, default=None)
    to_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    slot: Mapped[str | None] = mapped_column(String(1), default=None)


class Rollout(Base):
    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), index=True)
    selection: Mapped[dict[str, Any]] = mapped_column()
    waves: Mapped[list[Any]] = mapped_column()
    policy: Mapped[dict[str, Any]] = mapped_column()
    current_wave: Mapped[int] = mapped_column(Integer, default=-1)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    version: Mapped[ModelVersion] = relationship()
    devices: Mapped[list[RolloutDevice]] = relationship(
        back_populates="rollout", order_by="RolloutDevice.wave", cascade="all, delete-orphan"
    )
    wave_rows: Mapped[list[RolloutWave]] = relationship(
        back_populates="rollout", order_by="RolloutWave.index", cascade="all, delete-orphan"
    )


class RolloutWave(Base):
    __tablename__ = "rollout_waves"
    __table_args__ = (UniqueConstraint("rollout_id", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    percent: Mapped[float] = mapped_column(Float)
    size: Mapped[int] = mapped_column(Integer, doc="Devices in this wave alone.")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    healthy_since: Mapped[float | None] = mapped_column(Float, default=None)
    completed_at: Mapped[float | None] = mapped_column(Float, default=None)
    rollout: Mapped[Rollout] = relationship(back_populates="wave_rows")


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    wave: Mapped[int] = mapped_column(Integer)
    from_version: Mapped[int | None] = mapped_column(Integer, default=None)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    update_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    rollout: Mapped[Rollout] = relationship(back_populates="devices")
    device: Mapped[Device] = relationship()


class RolloutDecision(Base):
    """Every decision of a rollout, with its reason: wave started, gate crossed, paused, rolled back..."""

    __tablename__ = "rollout_decisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    at: Mapped[float] = mapped_column(Float)
    wave: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class GateEvaluation(Base):
    """The gate values of a rollout at one reconciler tick, for the record and the dashboard's charts."""

    __tablename__ = "gate_evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    at: Mapped[float] = mapped_column(Float)
    wave: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column()
    crossed: Mapped[list[Any]] = mapped_column(default=list)


# --------------------------------------------------------------------------- the retraining loop


class DeviceGroup(Base):
    """Settings the registry keeps per device group: for now the sample-upload switch and its caps."""

    __tablename__ = "device_groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    sample_upload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(64))


class Sample(Base):
    """One input a device uploaded (stored in the artifact store by sha256), its prediction and its label."""

    __tablename__ = "samples"
    __table_args__ = (
        Index("ix_samples_model_label", "model_id", "labeled_at"),
        Index("ix_samples_device_time", "device_id", "received_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(32), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    model_version: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"))
    device_group: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[float] = mapped_column(Float)
    captured_at: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    predicted_class: Mapped[int] = mapped_column(Integer)
    predicted_label: Mapped[str | None] = mapped_column(String(128), default=None)
    layout: Mapped[str | None] = mapped_column(String(4), default=None)
    shape: Mapped[list[Any]] = mapped_column()
    input_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    label: Mapped[int | None] = mapped_column(Integer, default=None)
    labeled_at: Mapped[float | None] = mapped_column(Float, default=None)
    label_source: Mapped[str | None] = mapped_column(String(64), default=None)


class DatasetSnapshot(Base):
    """A version of a model's labeled feedback data: train and held-out .npz files in the artifact store."""

    __tablename__ = "dataset_snapshots"
    __table_args__ = (UniqueConstraint("model_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    groups: Mapped[list[Any]] = mapped_column(default=list)
    holdout_fraction: Mapped[float] = mapped_column(Float)
    last_sample_row: Mapped[int] = mapped_column(Integer, doc="The newest samples.id it includes.")
    train_samples: Mapped[int] = mapped_column(Integer)
    holdout_samples: Mapped[int] = mapped_column(Integer)
    train_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    holdout_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))


class RetrainingPolicyRecord(Base):
    """A model's retraining policy (registry_api.retraining.RetrainingPolicy), revised in place."""

    __tablename__ = "retraining_policies"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), unique=True)
    revision: Mapped[int] = mapped_column(Integer)
    policy: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(64))


class DriftScore(Base):
    """A model version's pooled drift in one device group against its build-time reference, at one tick."""

    __tablename__ = "drift_scores"
    __table_args__ = (
        UniqueConstraint("model_id", "model_version", "device_group", "bucket"),
        Index("ix_drift_model_time", "model_id", "at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    model_version: Mapped[int] = mapped_column(Integer)
    device_group: Mapped[str] = mapped_column(String(64))
    bucket: Mapped[int] = mapped_column(
        BigInteger, doc="at // drift_interval_s: one row per tick, any replica."
    )
    at: Mapped[float] = mapped_column(Float)
    window_s: Mapped[float] = mapped_column(Float)
    devices: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(Integer)
    psi_confidence: Mapped[float] = mapped_column(Float)
    psi_class: Mapped[float] = mapped_column(Float)
    mean_shift_z: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    summary: Mapped[dict[str, Any]] = mapped_column()


class RetrainingJob(Base):
    """One retraining: trigger, inputs, attempts, outcome. Claimed by one registry at a time (lease)."""

    __tablename__ = "retraining_jobs"
    __table_args__ = (
        UniqueConstraint("model_id", "trigger_key"),
        UniqueConstraint("model_id", "new_version"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(32))
    trigger_key: Mapped[str] = mapped_column(String(128), doc="One job per trigger event, whoever sees it.")
    trigger_details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    policy_revision: Mapped[int] = mapped_column(Integer)
    policy: Mapped[dict[str, Any]] = mapped_column()
    parent_version: Mapped[int] = mapped_column(Integer)
    new_version: Mapped[int | None] = mapped_column(Integer, default=None)
    state: Mapped[str] = mapped_column(String(16), index=True)
    phase: Mapped[str | None] = mapped_column(String(32), default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    runner: Mapped[str | None] = mapped_column(String(16), default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    snapshot_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_snapshots.id"), default=None)
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outcome: Mapped[dict[str, Any]] = mapped_column(default=dict)
    evaluation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    log: Mapped[str | None] = mapped_column(Text, default=None)
    rollout_id: Mapped[int | None] = mapped_column(
        ForeignKey("rollouts.id", ondelete="SET NULL"), default=None
    )
    snapshot: Mapped[DatasetSnapshot | None] = relationship()
    model: Mapped[Model] = relationship()


class WebhookDelivery(Base):
    """One event for one webhook URL: a durable outbox row, written in the transaction of the change it
    reports, sent in order per URL by cloud_registry.webhooks.Deliverer, retried with backoff."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_url_state", "url", "state", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(32), doc="The same for every URL the event goes to.")
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    lease_until: Mapped[float | None] = mapped_column(Float, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, default=None)
