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
| GET    | /v1/device/config                      | -> DeviceConfig (sample upload switch, caps)|
| POST   | /v1/device/samples                     | SampleUpload -> SampleUploadResult          |

Downloads: the ETag is the archive's sha256 in quotes; a ranged GET answers
206 with an exact `Content-Range`, and `If-Range` with another ETag answers
the whole file with 200 (content-addressed archives never change, so that
only happens against a misbehaving server, which the agent must survive).

Samples: no raw input leaves a device unless the registry switches sample
upload on for the device's group (`DeviceConfig.samples`, off by default).
Then the agent keeps the inputs its model was least sure about (top
confidence below `max_confidence`, the `per_upload` least confident since the
last upload), and posts them every `upload_interval_s`, at most `max_per_day`
a UTC day; the registry enforces the same cap and says what is left.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgewire.messages import DesiredModel, ModelRef
from edgewire.topics import ID_RE

if TYPE_CHECKING:
    import numpy as np

API_PREFIX = "/v1"
MAX_ENROLL_TAGS = 32
MAX_SAMPLES_PER_UPLOAD = 256
MAX_SAMPLE_INPUT_BYTES = 4 * 2**20  # one input tensor, before base64
MAX_SAMPLE_REQUEST_BYTES = 32 * 2**20  # one POST of samples; the agent splits larger batches
SAMPLE_DTYPES = ("float32", "float16")


class Paths:
    enroll = f"{API_PREFIX}/enroll"
    desired = f"{API_PREFIX}/device/desired"
    update = f"{API_PREFIX}/device/update"
    telemetry = f"{API_PREFIX}/device/telemetry"
    bundle = f"{API_PREFIX}/device/bundles/{{archive_sha256}}"
    config = f"{API_PREFIX}/device/config"
    samples = f"{API_PREFIX}/device/samples"

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


# --------------------------------------------------------------------------- sample upload


class SampleUploadSettings(_Api):
    """Whether a device uploads the inputs its model was least sure about, and how many. Off by default."""

    enabled: bool = False
    max_per_day: int = Field(default=100, ge=0, le=100_000, description="Samples per device per UTC day.")
    max_confidence: float = Field(
        default=0.5, gt=0, le=1, description="Only inputs whose top-class confidence is below this."
    )
    per_upload: int = Field(
        default=16, ge=1, le=MAX_SAMPLES_PER_UPLOAD, description="The least confident N kept between uploads."
    )
    upload_interval_s: float = Field(default=300.0, ge=1, le=7 * 86400)


class DeviceConfig(BaseModel):
    """Settings the registry keeps for a device (from its group). Devices ignore fields they do not know,
    so the registry can add some without breaking older agents."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    samples: SampleUploadSettings = Field(default_factory=SampleUploadSettings)


class Sample(_Api):
    """One input the model was unsure about, as the model took it, with what the model said."""

    sample_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="Random; a repeated upload is a no-op.")
    captured_at: float = Field(description="Device clock, unix seconds.")
    confidence: float = Field(ge=0, le=1, description="Top-class probability.")
    predicted_class: int = Field(ge=0, le=2**31 - 1)
    predicted_label: str | None = Field(default=None, max_length=128)
    layout: Literal["NCHW", "NHWC"] | None = Field(
        default=None, description="Image layout of the input; None for other tensors."
    )
    shape: list[int] = Field(min_length=1, max_length=8, description="With the batch axis, which is 1.")
    dtype: Literal["float32", "float16"] = "float32"
    data: str = Field(
        max_length=(MAX_SAMPLE_INPUT_BYTES * 4) // 3 + 4,
        description="The preprocessed float input, C order, little-endian, base64.",
    )

    @model_validator(mode="after")
    def _size(self) -> Sample:
        if any(d < 1 or d > 65536 for d in self.shape) or self.shape[0] != 1:
            raise ValueError("shape is the input's, batch axis (1) first, every axis 1..65536")
        expected = math.prod(self.shape) * (4 if self.dtype == "float32" else 2)
        if expected > MAX_SAMPLE_INPUT_BYTES:
            raise ValueError(f"an input of {expected} bytes is over the {MAX_SAMPLE_INPUT_BYTES} byte limit")
        try:
            size = len(base64.b64decode(self.data, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("data is not base64") from None
        if size != expected:
            raise ValueError(f"data holds {size} bytes; shape {self.shape} of {self.dtype} needs {expected}")
        return self

    def array(self) -> np.ndarray:
        import numpy as np

        raw = base64.b64decode(self.data)
        return np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape)


def encode_input(array: np.ndarray) -> dict[str, object]:
    """`shape`, `dtype` and `data` of a Sample for a float array (float32 unless it is float16)."""
    import numpy as np

    value = np.asarray(array)
    dtype = "float16" if value.dtype == np.float16 else "float32"
    raw = np.ascontiguousarray(value, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    shape = list(value.shape) if value.ndim and value.shape[0] == 1 else [1, *value.shape]
    return {"shape": shape, "dtype": dtype, "data": base64.b64encode(raw).decode()}


class SampleUpload(_Api):
    fleet: str
    device: str
    model: ModelRef
    samples: list[Sample] = Field(min_length=1, max_length=MAX_SAMPLES_PER_UPLOAD)


class SampleUploadResult(_Api):
    accepted: int = Field(ge=0)
    duplicates: int = Field(ge=0, description="Sample ids the registry had already (a retried upload).")
    over_cap: int = Field(ge=0, description="Refused: past the device's daily cap.")
    remaining_today: int = Field(ge=0, description="Samples this device may still upload this UTC day.")
