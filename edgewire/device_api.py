"""The registry's device-facing HTTP API: paths and bodies, shared by the agent's client and the server.

Every call but enrollment carries `Authorization: Bearer <device token>`; the
token names one device, which may read only its own desired state and the
archives it is told to fetch, and write only its own status and telemetry.

| method | path                                   | body -> answer                              |
|--------|----------------------------------------|---------------------------------------------|
| POST   | /v1/enroll                             | EnrollRequest -> EnrollResponse             |
| GET    | /v1/device/desired                     | -> DesiredResponse                          |
| POST   | /v1/device/update                      | UpdateStatus -> 204 (MQTT's fallback)       |
| POST   | /v1/device/telemetry                   | Telemetry -> 204 (MQTT's fallback)          |
| GET    | /v1/device/bundles/{archive_sha256}    | -> the .edgebundle bytes; ETag, Range       |

Downloads: the ETag is the archive's sha256 in quotes; a ranged GET answers
206 with an exact `Content-Range`, and `If-Range` with another ETag answers
the whole file with 200 (content-addressed archives never change, so that
only happens against a misbehaving server, which the agent must survive).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgewire.messages import DesiredModel
from edgewire.topics import ID_RE

API_PREFIX = "/v1"
MAX_ENROLL_TAGS = 32


class Paths:
    enroll = f"{API_PREFIX}/enroll"
    desired = f"{API_PREFIX}/device/desired"
    update = f"{API_PREFIX}/device/update"
    telemetry = f"{API_PREFIX}/device/telemetry"
    bundle = f"{API_PREFIX}/device/bundles/{{archive_sha256}}"

    @staticmethod
    def bundle_for(archive_sha256: str) -> str:
        return f"{API_PREFIX}/device/bundles/{archive_sha256}"


class _Api(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EnrollRequest(_Api):
    """A new device presents its one-time enrollment token and says what it is."""

    token: str = Field(min_length=16, max_length=256)
    name: str | None = Field(
        default=None, max_length=128, description="Wanted device id; the registry may refuse."
    )
    target: str = Field(description="The target profile this device takes (rpi5, jetson-orin-nano, ...).")
    tags: list[str] = Field(default_factory=list, max_length=MAX_ENROLL_TAGS)
    hardware: dict[str, str] = Field(default_factory=dict, description="Free-form facts: model, serial, OS.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not ID_RE.match(value):
            raise ValueError("name must be 1-63 lowercase letters, digits or '-'")
        return value


class MqttSettings(_Api):
    host: str
    port: int = Field(ge=1, le=65535)
    username: str
    password: str
    tls: bool = False
    keepalive_s: int = Field(default=30, ge=5, le=3600)


class EnrollResponse(_Api):
    """The device's own credential: shown once, stored by the agent with mode 0600."""

    device: str
    fleet: str
    device_token: str
    mqtt: MqttSettings | None = None
    command_public_keys: list[str] = Field(
        default_factory=list, description="PEM Ed25519 keys whose rollback orders the device obeys."
    )


class DesiredResponse(_Api):
    desired: DesiredModel | None = None
