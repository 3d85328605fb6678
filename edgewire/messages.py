"""MQTT payloads, one pydantic model per topic kind (see `edgewire.topics` for where each goes).

Every payload a device queues (telemetry, update status) carries:
- `msg_id`: a random id, unique per message; the cloud drops a message whose
  id it has seen (QoS 1 delivers at least once, and the agent's disk queue
  resends whatever the broker did not acknowledge before a restart);
- `seq`: the device's own counter, persisted across restarts and strictly
  increasing, so the cloud can order a device's messages and see gaps;
- `sent_at`: the device clock when the message was made (unix seconds).

Presence is retained state, not a queued event: the newest `session` wins, so
a Last Will that the broker delivers late ("offline", session 7) never
overrides a newer connection ("online", session 8).

Models forbid unknown fields, like the manifest: a payload from a newer
schema fails loudly instead of being half-read.
"""

from __future__ import annotations

import json
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgebundle.manifest import DriftSummary
from edgewire.commands import RollbackOrder
from edgewire.topics import ID_PATTERN
from edgewire.update_states import UpdateState

WIRE_SCHEMA = 1
MAX_PAYLOAD_BYTES = 256 * 1024  # anything larger is refused before it is parsed
_MSG_ID_RE = r"^[0-9a-f]{32}$"

Slot = Literal["a", "b"]


def new_message_id() -> str:
    return uuid.uuid4().hex


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Addressed(_Wire):
    # Checked by pydantic's own validator (a Python one was a twentieth of the registry's ingest time).
    fleet: str = Field(pattern=ID_PATTERN, description="1-63 lowercase letters, digits or '-'.")
    device: str = Field(pattern=ID_PATTERN, description="1-63 lowercase letters, digits or '-'.")


class _Queued(_Addressed):
    """The envelope of every message that goes through the device's disk queue."""

    schema_version: Literal[1] = WIRE_SCHEMA
    msg_id: str = Field(pattern=_MSG_ID_RE)
    seq: int = Field(ge=0, description="Per-device counter, strictly increasing across restarts.")
    sent_at: float = Field(description="Device clock, unix seconds.")


class ModelRef(_Wire):
    """The model a device serves, and from which A/B slot."""

    name: str
    version: int = Field(ge=1)
    slot: Slot | None = None
    target: str | None = None


class Presence(_Addressed):
    kind: Literal["presence"] = "presence"
    state: Literal["online", "offline"]
    session: int = Field(ge=1, description="Connection counter, persisted; a Will carries its session's.")
    at: float
    agent_version: str | None = None
    model: ModelRef | None = None


class InferenceStats(_Wire):
    """Inference over one telemetry interval."""

    count: int = Field(ge=0)
    errors: int = Field(ge=0)
    latency_ms_p50: float | None = Field(default=None, ge=0)
    latency_ms_p95: float | None = Field(default=None, ge=0)
    throughput_per_s: float = Field(default=0.0, ge=0)


class SystemStats(_Wire):
    """What the device's health looks like; None where the platform does not say."""

    cpu_percent: float | None = None
    memory_used_mb: float | None = None
    memory_percent: float | None = None
    agent_rss_mb: float | None = None
    temperature_c: float | None = None
    gpu_percent: float | None = None
    gpu_temperature_c: float | None = None
    power_w: float | None = None


class QueueStats(_Wire):
    pending: int = Field(ge=0, description="Messages waiting on disk for the broker.")
    dropped_total: int = Field(ge=0, description="Messages dropped since the queue was created (bound hit).")


class Telemetry(_Queued):
    kind: Literal["telemetry"] = "telemetry"
    interval_s: float = Field(gt=0)
    model: ModelRef | None = None
    inference: InferenceStats
    system: SystemStats = Field(default_factory=SystemStats)
    drift: DriftSummary | None = None
    queue: QueueStats | None = None


class UpdateStatus(_Queued):
    """One transition of a device's update, as the registry's rollout needs to see it."""

    # `state` holds the plain string after validation, as before the states were an enum
    model_config = ConfigDict(use_enum_values=True)

    kind: Literal["update"] = "update"
    update_id: str = Field(min_length=1, max_length=64, description="Which desired version this is about.")
    rollout_id: int | None = None
    model: str
    from_version: int | None = Field(default=None, ge=1)
    to_version: int = Field(ge=1)
    state: UpdateState
    reason: str | None = Field(default=None, max_length=500)
    slot: Slot | None = None


class DesiredModel(_Wire):
    """The cloud's wish for one device: serve this version. Retained on the device's `desired` topic.

    The bundle itself is signed, so this message needs no signature of its own: at worst a forged
    one points at another validly signed bundle of a newer version. Going back to an older version
    needs `rollback`, an order signed with a key the device pins (see `edgewire.commands`).
    """

    kind: Literal["desired"] = "desired"
    msg_id: str = Field(pattern=_MSG_ID_RE)
    update_id: str = Field(min_length=1, max_length=64)
    issued_at: float
    model: str
    version: int = Field(ge=1)
    target: str
    archive_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    archive_size: int = Field(gt=0)
    url: str = Field(description="Where to download the archive: absolute, or a path on the registry.")
    rollout_id: int | None = None
    rollback: RollbackOrder | None = None


PAYLOADS: dict[str, type[_Wire]] = {
    "presence": Presence,
    "telemetry": Telemetry,
    "update": UpdateStatus,
    "desired": DesiredModel,
}


class PayloadError(ValueError):
    """A payload that is too large, not JSON, or not of its topic's schema."""


def parse_payload(kind: str, payload: bytes | str) -> _Wire:
    """Parse the payload of a topic kind; PayloadError for anything else (the caller logs and drops it)."""
    model = PAYLOADS.get(kind)
    if model is None:
        raise PayloadError(f"no payload schema for topic kind {kind!r}")
    raw = payload.encode() if isinstance(payload, str) else payload
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(raw)} bytes is over the {MAX_PAYLOAD_BYTES} byte limit")
    try:
        return model.model_validate_json(raw)  # parsed and validated in one pass, no Python dict between
    except ValidationError as exc:
        if not _json_invalid(exc):
            raise PayloadError(f"bad {kind} payload: {str(exc).splitlines()[0][:200]}") from exc
    # JSON that pydantic's parser refuses: the standard library's (NaN and Infinity tokens, UTF-16 or
    # UTF-32, a byte-order mark, a lone surrogate) decides, as it always did, so that what is accepted
    # and refused, and the error, stay the same. Only bad input comes this way.
    try:
        return model.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise PayloadError(f"bad {kind} payload: {str(exc).splitlines()[0][:200]}") from exc


def _json_invalid(exc: ValidationError) -> bool:
    return any(error["type"] == "json_invalid" for error in exc.errors(include_url=False))


def dump_payload(message: _Wire) -> bytes:
    """The bytes to publish: compact JSON, no NaN."""
    return message.model_dump_json(exclude_none=False).encode()
