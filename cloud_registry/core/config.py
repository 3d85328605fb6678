"""Settings, from environment variables (`EDGECTL_REGISTRY_*`) and an optional YAML or JSON file.

Precedence, highest first: arguments given in code, environment variables, the
file named by `EDGECTL_REGISTRY_CONFIG`, the defaults below. The defaults run
a self-contained registry: SQLite and artifacts under `./registry-data`, no
MQTT.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_FILE_ENV = "EDGECTL_REGISTRY_CONFIG"


class _FileSource(PydanticBaseSettingsSource):
    """Values from the YAML/JSON file named by EDGECTL_REGISTRY_CONFIG (YAML is a superset of JSON)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_ENV)
        if not path:
            return {}
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read registry settings file {path}: {exc.strerror or exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"registry settings file {path} must hold a mapping of setting names to values")
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGECTL_REGISTRY_", extra="forbid", hide_input_in_errors=True
    )

    # Storage of records and bytes.
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty: SQLite at <data_dir>/registry.db."
    )
    data_dir: Path = Field(default=Path("registry-data"), description="SQLite file and local artifacts.")
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_prefix: str = "artifacts/"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    # Security.
    admin_token: SecretStr | None = Field(
        default=None, description="Bootstrap admin API token, created on start when given (keep it secret)."
    )
    trusted_keys: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="PEM Ed25519 public keys whose bundles are accepted."
    )
    command_key: Path | None = Field(
        default=None,
        description="PEM Ed25519 private key that signs rollback orders; empty: <data_dir>/command.key, "
        "created on first start.",
    )
    max_upload_bytes: int = Field(default=512 * 2**20, gt=0)
    enroll_token_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)

    # Fleet and MQTT.
    fleet: str = "default"
    public_url: str = Field(default="", description="Base URL devices use; empty: bundle URLs are paths.")
    mqtt_host: str | None = Field(default=None, description="Broker the registry connects to; None: no MQTT.")
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = False
    mqtt_client_id: str = Field(default="edgectl-registry", description="Unique per replica.")
    mqtt_share_group: str | None = Field(
        default=None, description="MQTT 5 shared subscription group; set on every replica to split ingest."
    )
    device_mqtt_host: str | None = Field(default=None, description="Broker host given to devices.")
    device_mqtt_port: int | None = None
    mosquitto_dir: Path | None = Field(
        default=None,
        description="Write the broker's whole config here (mosquitto.conf, its password files and ACLs, "
        "its database), rewritten on enrollment.",
    )
    mosquitto_pid_file: Path | None = Field(
        default=None,
        description="The broker's pid file, sent SIGHUP after its files change; empty: <mosquitto_dir>/mosquitto.pid.",
    )
    mosquitto_device_bind: str = Field(
        default="", description="Address of the broker's device listener; empty: every interface."
    )
    mosquitto_autosave_s: int = Field(
        default=10, ge=1, le=86400, description="How often the broker saves its sessions and messages."
    )

    # Ingest and rollouts.
    ingest_batch_size: int = Field(default=500, ge=1)
    ingest_flush_s: float = Field(default=0.2, gt=0)
    ingest_writers: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Ingest lanes (a thread and a database connection each); default 2 on PostgreSQL, "
        "1 on SQLite (one writer at a time).",
    )
    reconcile_interval_s: float = Field(default=2.0, gt=0)
    presence_timeout_s: float = Field(default=180.0, gt=0)
    telemetry_retention_s: float = Field(
        default=7 * 86400,
        ge=3600,
        le=10 * 365 * 86400,
        description="Raw telemetry is kept this long, then rolled up into hourly aggregates per device "
        "and model version.",
    )
    telemetry_rollup_interval_s: float = Field(
        default=300.0, gt=0, description="How often raw telemetry past its retention is rolled up."
    )

    # The retraining loop (docs/retraining.md).
    drift_interval_s: float = Field(default=60.0, gt=0, description="How often fleet drift is scored.")
    drift_window_s: float = Field(default=900.0, gt=0, description="Telemetry pooled into one drift score.")
    retrain_interval_s: float = Field(
        default=5.0, gt=0, description="How often triggers are evaluated and jobs claimed and collected."
    )
    # Observability: Prometheus metrics (GET /metrics, read-only token) and webhooks.
    metrics_per_device: bool = Field(
        default=False,
        description="Also export per-device series on /metrics (one series per device: off for large fleets).",
    )
    metrics_rollout_window_s: float = Field(
        default=86400.0,
        gt=0,
        le=366 * 86400,
        description="A finished rollout stays on /metrics this long (a halted one keeps its alert firing).",
    )
    webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="http(s) URLs that receive the registry's events as signed JSON."
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key that signs each webhook body (keep it secret)."
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60, description="One delivery attempt's limit.")
    webhook_max_attempts: int = Field(default=10, ge=1, le=100, description="Attempts before giving up.")
    webhook_backoff_s: float = Field(default=1.0, gt=0, le=3600, description="Wait after the first failure.")
    webhook_backoff_max_s: float = Field(default=300.0, gt=0, le=86400, description="Longest wait.")
    jobs_runner: Literal["local", "ray"] = Field(default="local", description="Local processes, or Ray.")
    jobs_max_workers: int = Field(default=1, ge=1, le=1024, description="Jobs run at once by this replica.")
    jobs_dir: Path | None = Field(
        default=None, description="Job work folders; empty: <data_dir>/jobs. Ray workers must reach it."
    )
    jobs_lease_s: float = Field(
        default=60.0, gt=0, description="A running job whose replica stops renewing this long is run again."
    )
    jobs_sign_key: Path | None = Field(
        default=None,
        description="PEM Ed25519 private key that signs the bundles jobs build (its .pub trusted).",
    )
    edgectl_command: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="How jobs run the toolchain's CLI; empty: `edgectl` on PATH, else this Python's "
        "`-m edgectl.main`.",
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster for jobs_runner ray (host:port, ray://..., auto)."
    )

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, value: str) -> str:
        from edgewire.topics import check_id

        return check_id(value, "fleet id")

    @model_validator(mode="after")
    def _drift_within_retention(self) -> Settings:
        if self.drift_window_s > self.telemetry_retention_s:
            raise ValueError(
                f"drift_window_s ({self.drift_window_s:g} s) is longer than telemetry_retention_s "
                f"({self.telemetry_retention_s:g} s): fleet drift pools raw telemetry, which is kept only "
                "that long"
            )
        return self

    @model_validator(mode="after")
    def _broker(self) -> Settings:
        if self.mosquitto_dir is not None:
            from cloud_registry.mosquitto import layout

            layout(self)  # ValueError when these settings cannot make the broker's config
        return self

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        if isinstance(value, str):  # EDGECTL_REGISTRY_WEBHOOK_URLS=https://a,https://b (or a JSON list)
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _webhooks(self) -> Settings:
        from urllib.parse import urlsplit

        for url in self.webhook_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
                raise ValueError(
                    f"webhook_urls: {url[:80]!r} is not an http(s) URL (e.g. https://hooks.slack.com/services/...)"
                )
        if self.webhook_urls and self.webhook_secret is None:
            raise ValueError(
                "webhook_urls needs webhook_secret: every delivery is signed with it (HMAC-SHA256)"
            )
        return self

    @field_validator("edgectl_command", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        if isinstance(value, str):  # EDGECTL_REGISTRY_EDGECTL_COMMAND="python -m edgectl.main"
            import shlex

            return shlex.split(value)
        return value

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, str):  # EDGECTL_REGISTRY_TRUSTED_KEYS=a.pub,b.pub (or a JSON list)
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [part for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def command_key_path(self) -> Path:
        return self.command_key or self.data_dir / "command.key"

    @property
    def jobs_path(self) -> Path:
        return (self.jobs_dir or self.data_dir / "jobs").resolve()
