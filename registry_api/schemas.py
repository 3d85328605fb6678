"""Request and response bodies of the admin API (the device API's bodies are edgewire's).

Over 400 lines on purpose: this is a contract, and a reviewer reads a contract whole. The bodies are
declarations (fields, bounds, one validator each at most) grouped by area: tokens, models, devices,
rollouts and their transition table, webhooks. The retraining loop's bodies are their own file.
"""

from __future__ import annotations

import itertools
import math
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgebase.ids import NAME_PATTERN, SLUG_PATTERN
from edgewire.topics import ID_RE

ALIAS_RE = r"^[a-z][a-z0-9_-]{0,63}$"
TAG_RE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
GROUP_RE = SLUG_PATTERN
TOKEN_NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"
Role = Literal["read-only", "deployer", "admin"]
INT32_MAX = 2**31 - 1  # versions, counts and ids are INTEGER columns
INT64_MAX = 2**63 - 1  # sequence numbers are BIGINT


class RolloutState(StrEnum):
    """Where a rollout stands. It moves only along `ROLLOUT_TRANSITIONS`."""

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    HALTED = "halted"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


# Rollouts that still own their devices (a device is in at most one of them).
ACTIVE_ROLLOUT_STATES: tuple[str, ...] = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)
# (state, action) -> the state it leads to. The operator's actions (pause, resume, abort, rollback)
# are refused with 409 from any other state; the reconciler's (complete, halt) act on running ones.
ROLLOUT_TRANSITIONS: dict[tuple[str, str], str] = {
    ("running", "pause"): "paused",
    ("paused", "resume"): "running",
    ("running", "complete"): "completed",  # every wave met its success threshold and baked
    ("running", "halt"): "halted",  # a health gate crossed or a wave timed out; its devices sent back
    **{(state, "abort"): "aborted" for state in ACTIVE_ROLLOUT_STATES},  # no more waves; devices keep it
    **{(state, "rollback"): "rolled_back" for state in ("running", "paused", "completed", "aborted")},
}


def rollout_sources(action: str) -> list[str]:
    """The states from which `action` is allowed, in the enum's order."""
    return [state.value for state in RolloutState if (state.value, action) in ROLLOUT_TRANSITIONS]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def check_tags(tags: list[str]) -> list[str]:
    for tag in tags:
        if not re.match(TAG_RE, tag):
            raise ValueError(f"tag {tag!r}: 1-64 letters, digits, '.', '_', ':' or '-'")
    return sorted(set(tags))


# --------------------------------------------------------------------------- tokens


class TokenCreate(_Body):
    name: str = Field(pattern=TOKEN_NAME_RE)
    role: Role


class TokenInfo(BaseModel):
    name: str
    role: Role
    created_at: float
    revoked_at: float | None = None


class TokenCreated(TokenInfo):
    token: str = Field(description="Shown once; the registry keeps only its hash.")


# --------------------------------------------------------------------------- models


class PushResult(BaseModel):
    model: str
    version: int
    target: str
    archive_sha256: str
    archive_size: int
    created: bool = Field(description="False when this exact bundle was already registered.")
    stored_bytes: bool = Field(description="False when the same bytes were already in the store.")


class ArtifactInfo(BaseModel):
    target: str
    runtime: str
    precision: str
    archive_sha256: str
    archive_size: int
    key_id: str
    metric: str | None
    metric_value: float | None
    metric_reference: float | None
    drop_points: float | None
    validation_passed: bool | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    uploaded_at: float
    uploaded_by: str


class Lineage(BaseModel):
    source_kind: str
    source_sha256: str
    parent_version: int | None
    training_data: str | None
    data_snapshots: dict[str, str]
    trigger: str | None


class VersionInfo(BaseModel):
    model: str
    version: int
    created_at: float
    aliases: list[str]
    lineage: Lineage
    artifacts: list[ArtifactInfo]


class ModelSummary(BaseModel):
    name: str
    created_at: float
    latest_version: int | None
    versions: int
    aliases: dict[str, int]


class ModelInfo(ModelSummary):
    version_list: list[VersionInfo]


class AliasSet(_Body):
    version: int = Field(ge=1, le=INT32_MAX)


class AliasInfo(BaseModel):
    model: str
    alias: str
    version: int


# --------------------------------------------------------------------------- devices


class EnrollmentTokenCreate(_Body):
    group: str | None = Field(default=None, pattern=GROUP_RE)
    tags: list[str] = Field(default_factory=list, max_length=32)
    name: str | None = Field(default=None, description="Pin the device id the token enrolls.")
    ttl_s: float | None = Field(default=None, gt=0, le=365 * 24 * 3600)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return check_tags(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not ID_RE.match(value):
            raise ValueError("device ids are 1-63 lowercase letters, digits or '-'")
        return value


class EnrollmentTokenCreated(BaseModel):
    token: str = Field(description="One-time; give it to the device's `edgectl-agent enroll`.")
    expires_at: float
    group: str | None
    tags: list[str]
    name: str | None


class DeviceModel(BaseModel):
    name: str | None
    version: int | None
    slot: str | None


class DeviceInfo(BaseModel):
    name: str
    fleet: str
    target: str
    group: str | None
    tags: list[str]
    hardware: dict[str, str]
    enrolled_at: float
    revoked: bool
    online: bool
    last_seen: float | None
    agent_version: str | None
    model: DeviceModel
    desired_version: int | None
    last_update_state: str | None
    health: str = Field(description="ok, degraded (errors in the last telemetry), offline or unknown.")
    last_telemetry_at: float | None
    last_telemetry: dict[str, Any] | None


class DeviceUpdate(_Body):
    group: str | None = Field(default=None, pattern=GROUP_RE)
    tags: list[str] | None = Field(default=None, max_length=32)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_tags(value)


class TelemetryPoint(BaseModel):
    received_at: float
    sent_at: float
    seq: int
    model_version: int | None
    count: int
    errors: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    throughput_per_s: float
    cpu_percent: float | None
    memory_percent: float | None
    temperature_c: float | None
    reports: int = Field(
        default=1,
        description="Raw reports this point stands for: 1, or more for an hourly aggregate of telemetry past "
        "its retention (count and errors are then the mean per report).",
    )


# --------------------------------------------------------------------------- rollouts


class Selection(_Body):
    target: str | None = Field(default=None, pattern=SLUG_PATTERN)
    group: str | None = Field(default=None, pattern=GROUP_RE)
    tag: str | None = Field(default=None, pattern=TAG_RE)
    devices: list[str] | None = Field(default=None, max_length=100_000, description="Explicit device ids.")


class GatePolicy(_Body):
    """Thresholds of a rollout. Rates are fractions (0.05 = 5 %).

    Boundaries: an error-type gate fires only when its value is strictly above its
    threshold (a value exactly at it passes); the success threshold is met when the
    share of a wave's devices that succeeded is at or above it.
    """

    success_threshold: float = Field(
        default=1.0, gt=0, le=1, description="Share of a wave that must report SUCCEEDED (met at >=)."
    )
    max_failure_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="FAILED, REJECTED or ROLLED_BACK over updated devices (fires at >).",
    )
    max_error_rate_increase: float = Field(
        default=0.01, ge=0, le=1, description="Inference error rate after minus before (fires at >)."
    )
    max_p95_regression: float = Field(
        default=0.25, ge=0, le=100, description="p95 latency after over before, minus 1 (fires at >)."
    )
    max_confidence_psi: float = Field(
        default=0.25,
        ge=0,
        le=100,
        description="PSI of the confidence histograms, after vs before (fires at >).",
    )
    min_inferences: int = Field(
        default=0,
        ge=0,
        le=10**9,
        description="Inferences needed on each side, all judged devices together, before telemetry gates "
        "count; a wave waits for them.",
    )
    # Minimum evidence before a telemetry gate judges (AWS IoT Jobs' abort criteria have a minimum of
    # executed things for the same reason): a wave whose devices have a baseline waits for it.
    min_device_inferences: int = Field(
        default=20,
        ge=0,
        le=10**9,
        description="Inferences a device must report on each side (previous and new version) to count.",
    )
    min_baked_s: float = Field(
        default=10.0,
        ge=0,
        le=30 * 86400,
        description="Seconds of reporting intervals a device must cover on the new version to count.",
    )
    min_devices: int = Field(
        default=3,
        ge=1,
        le=10**6,
        description="Devices that must count before telemetry gates judge (all with a baseline, if fewer).",
    )
    bake_s: float = Field(default=60.0, ge=0, le=30 * 86400, description="A wave stays healthy this long.")
    wave_timeout_s: float = Field(default=3600.0, gt=0, le=30 * 86400)
    baseline_window_s: float = Field(default=3600.0, gt=0, le=30 * 86400)


class Exponential(_Body):
    first_percent: float = Field(gt=0, le=100)
    factor: float = Field(gt=1, le=100)


class RolloutCreate(_Body):
    model: str = Field(pattern=NAME_PATTERN)
    version: int | None = Field(default=None, ge=1, le=INT32_MAX)
    alias: str | None = Field(default=None, pattern=ALIAS_RE)
    selection: Selection = Field(default_factory=Selection)
    waves: list[float] | None = Field(
        default=None, min_length=1, max_length=20, description="Cumulative percentages, ending at 100."
    )
    exponential: Exponential | None = None
    policy: GatePolicy = Field(default_factory=GatePolicy)

    @model_validator(mode="after")
    def _check(self) -> RolloutCreate:
        if (self.version is None) == (self.alias is None):
            raise ValueError("give exactly one of version and alias")
        if self.waves is not None and self.exponential is not None:
            raise ValueError("give waves or exponential, not both")
        waves = self.wave_percents()
        if any(not (0 < w <= 100) for w in waves) or any(b <= a for a, b in itertools.pairwise(waves)):
            raise ValueError("waves are cumulative percentages, strictly increasing, each in (0, 100]")
        if waves[-1] != 100:
            raise ValueError("the last wave must be 100 (percent of the selected devices)")
        return self

    def wave_percents(self) -> list[float]:
        if self.exponential is not None:
            return exponential_waves(self.exponential.first_percent, self.exponential.factor)
        return list(self.waves) if self.waves else [1.0, 10.0, 50.0, 100.0]


def exponential_waves(first_percent: float, factor: float) -> list[float]:
    waves = []
    value = first_percent
    while value < 100 and len(waves) < 19:
        waves.append(round(value, 6))
        value *= factor
    return [*waves, 100.0]


def wave_sizes(percents: list[float], devices: int) -> list[int]:
    """Devices in each wave alone: cumulative count ceil(p% of n), so a 1 % wave of 30 devices is 1 device."""
    cumulative = [min(devices, math.ceil(p * devices / 100 - 1e-9)) for p in percents]
    sizes, before = [], 0
    for count in cumulative:
        sizes.append(max(0, count - before))
        before = max(before, count)
    return sizes


class RolloutAction(_Body):
    reason: str | None = Field(default=None, max_length=500)


class WaveInfo(BaseModel):
    index: int
    percent: float
    size: int
    state: str
    started_at: float | None
    healthy_since: float | None
    completed_at: float | None
    succeeded: int = Field(description="Devices whose update to this version succeeded (reverted or not).")
    failed: int = Field(
        description="Devices whose update failed, was rolled back or rejected (reverted or not)."
    )


class DecisionInfo(BaseModel):
    at: float
    wave: int
    action: str
    reason: str
    actor: str
    details: dict[str, Any]


class RolloutInfo(BaseModel):
    id: int
    model: str
    version: int
    state: RolloutState
    reason: str | None
    selection: dict[str, Any]
    policy: GatePolicy
    current_wave: int
    created_at: float
    created_by: str
    finished_at: float | None
    devices: dict[str, int] = Field(description="Devices per state.")
    touched: int = Field(description="Devices ever given this version by the rollout.")
    total: int
    waves: list[WaveInfo]
    gates: dict[str, Any] | None = Field(description="The newest gate values.")
    waiting: str | None = Field(
        default=None,
        description="What the current wave waits for (updates, evidence for the gates, its bake time), "
        "as of the reconciler's last tick; None when the rollout is not running.",
    )
    decisions: list[DecisionInfo]


WebhookState = Literal["pending", "delivered", "failed"]


class WebhookDeliveryInfo(BaseModel):
    """One event for one webhook receiver (its host only: a Slack webhook URL's path is its secret)."""

    id: int
    event_id: str
    event: str
    host: str
    state: WebhookState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    delivered_at: float | None
    text: str
