"""The agent's configuration: one YAML file, validated by pydantic, relative paths taken from its folder.

Secrets never live in this file: the device token and the MQTT password come
from the credentials file written by `edgectl-agent enroll` (mode 0600), or
from a password file named here. deploy/agent.example.yaml shows every field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from device_agent.errors import ConfigError
from edgebase.ids import is_slug

GIB = 2**30
_EXAMPLE = "see deploy/agent.example.yaml for a complete example"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DeviceConfig(_Config):
    target: str = Field(description="The target profile this device is (rpi5, jetson-orin-nano, cpu...).")
    id: str | None = Field(default=None, description="Device id; taken from the credentials when enrolled.")
    fleet: str | None = Field(default=None, description="Fleet id; taken from the credentials when enrolled.")
    tags: list[str] = Field(default_factory=list, description="Sent with the enrollment request.")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not is_slug(value):
            raise ValueError(
                "a target name is lowercase letters, digits and '-', like rpi5 or jetson-orin-nano"
            )
        return value

    @field_validator("id", "fleet")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        from edgewire.topics import ID_RE

        if value is not None and not ID_RE.match(value):
            raise ValueError("ids are 1-63 lowercase letters, digits or '-', starting alphanumeric")
        return value


class RegistryConfig(_Config):
    url: str = Field(description="Base URL of the registry, e.g. https://registry.example.com")
    credentials_file: Path | None = Field(
        default=None, description="Written by `edgectl-agent enroll`; default <data_dir>/credentials.json."
    )
    poll_interval_s: float = Field(
        default=300.0, ge=0.05, description="How often to ask for the desired model."
    )
    timeout_s: float = Field(default=30.0, gt=0)
    ca_file: Path | None = Field(default=None, description="CA bundle for a registry with a private CA.")
    http_fallback_after_s: float = Field(
        default=30.0, ge=0, description="Post update statuses over HTTP once MQTT has been down this long."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("the registry url must start with http:// or https:// and name a host")
        return value.rstrip("/")


class MqttConfig(_Config):
    """The broker; by default the one the registry named at enrollment."""

    enabled: bool = True
    host: str | None = Field(default=None, description="Overrides the broker from the credentials.")
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password_file: Path | None = Field(default=None, description="A file holding the MQTT password.")
    tls: bool = False
    ca_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    max_inflight: int = Field(
        default=20, ge=1, le=1000, description="Messages handed to the broker, unacked."
    )


class TelemetryConfig(_Config):
    interval_s: float = Field(default=60.0, ge=0.05)
    queue_max_messages: int = Field(
        default=10_000, ge=10, description="Bound of the disk queue; past it the oldest are dropped."
    )
    drift: bool = True
    drift_samples_per_s: float | None = Field(
        default=20.0, gt=0, description="Inferences per second summarized for drift at most; null: every one."
    )
    system: bool = True
    sample_upload: bool = Field(
        default=True,
        description="Let the registry switch sample upload on for this device's group; false: never, whatever "
        "the registry says.",
    )


class HttpConfig(_Config):
    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="Loopback by default; the API has no authentication.")
    port: int = Field(default=8380, ge=0, le=65535)
    max_request_bytes: int = Field(default=16 * 2**20, ge=1024)


class InferenceConfig(_Config):
    threads: int | None = Field(
        default=None, ge=1, le=256, description="Runtime threads; None: the runtime's."
    )
    providers: Literal["auto"] | list[str] = Field(
        default="auto", description="ONNX Runtime execution providers; auto: TensorRT, CUDA, CPU as present."
    )


class InputLoopConfig(_Config):
    """Headless devices: run every image of a folder, or the frames of a video, and append results to a file."""

    folder: Path | None = None
    video: Path | None = None
    results: Path = Field(description="JSON lines, one per image or frame.")
    after: Literal["keep", "move", "delete"] = Field(
        default="move", description="What to do with a processed image (move: into <folder>/done)."
    )
    poll_s: float = Field(default=1.0, gt=0)
    every_n_frames: int = Field(default=1, ge=1)
    patterns: list[str] = Field(default_factory=lambda: ["*.jpg", "*.jpeg", "*.png", "*.bmp", "*.npy"])

    @model_validator(mode="after")
    def _one_source(self) -> InputLoopConfig:
        if (self.folder is None) == (self.video is None):
            raise ValueError("set exactly one of folder or video")
        return self


class UpdateConfig(_Config):
    max_archive_bytes: int = Field(default=2 * GIB, gt=0, description="Hard cap of a downloaded archive.")
    max_unpacked_bytes: int = Field(default=4 * GIB, gt=0, description="Cap of a bundle's extracted files.")
    download_attempts: int = Field(default=8, ge=1, description="Failed attempts in a row before giving up.")
    backoff_initial_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    crash_loop_limit: int = Field(
        default=3, ge=1, description="Restarts in one risky update state before it is rolled back or failed."
    )
    probation_s: float = Field(
        default=0.0, ge=0, description="Serve the new model this long before committing; a crash rolls back."
    )
    retry_failed_after_s: float = Field(default=600.0, ge=0, description="When to retry a FAILED update.")
    healthcheck_runs: int = Field(default=5, ge=1, description="Timed runs of the sample input.")


class AgentConfig(_Config):
    device: DeviceConfig
    data_dir: Path = Field(description="Slots, state, queue and downloads; on persistent storage.")
    trusted_keys: list[Path] = Field(
        min_length=1,
        description="Public keys (PEM) whose bundles this device installs; several for rotation.",
    )
    command_keys: list[Path] = Field(
        default_factory=list, description="Public keys whose rollback orders this device obeys."
    )
    registry: RegistryConfig | None = None
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    input: InputLoopConfig | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def credentials_path(self) -> Path:
        if self.registry is not None and self.registry.credentials_file is not None:
            return self.registry.credentials_file
        return self.data_dir / "credentials.json"


def _resolve_paths(model: BaseModel, base: Path) -> None:
    """Make every relative Path field absolute against the config file's folder (in place)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(model, name, (base / value).resolve())
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            setattr(model, name, [v if v.is_absolute() else (base / v).resolve() for v in value])
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "<root>"
    message = first.get("msg", "invalid").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"


def parse_config(data: object, where: str, base: Path) -> AgentConfig:
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"config {where}: expected a mapping of settings, got {got}", hint=_EXAMPLE)
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config {where}: {_first_error(exc)}", hint=_EXAMPLE) from None
    _resolve_paths(config, base)
    return config


def load_config(path: Path | str) -> AgentConfig:
    """Read and validate the YAML file; ConfigError (one line + hint) on any problem."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", hint=_EXAMPLE) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"cannot read config file {path}: {reason}", hint="check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(
            f"config {path} is not valid YAML: {problem}{line}", hint="fix the YAML syntax"
        ) from None
    return parse_config(data, str(path), path.resolve().parent)
