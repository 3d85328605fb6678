"""Who this device is and what it trusts: credentials (mode 0600), pinned keys, and the broker to use.

The credentials file is the registry's `EnrollResponse`, written once by
`edgectl-agent enroll`. It holds the device token and the MQTT password, so
it must be readable by the agent's user only; the agent refuses to start on
a file others can read, like ssh does with a private key. Secrets stay in
`SecretStr` in memory, and the log redaction filter knows them.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr, ValidationError

from device_agent.config import AgentConfig
from device_agent.errors import AgentError, ConfigError
from device_agent.mqtt_link import BrokerSettings
from device_agent.update import Keys
from edgebase.durable import atomic_write
from edgewire import EnrollResponse

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

CREDENTIALS_MODE = 0o600


@dataclass(frozen=True)
class Identity:
    device: str
    fleet: str
    token: SecretStr | None = None
    broker: BrokerSettings | None = None
    command_keys: list[Ed25519PublicKey] = field(default_factory=list)

    def secrets(self) -> list[str]:
        values = [self.token.get_secret_value()] if self.token else []
        if self.broker is not None and self.broker.password is not None:
            values.append(self.broker.password.get_secret_value())
        return [v for v in values if v]


def read_credentials(path: Path) -> EnrollResponse | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if info.st_mode & 0o077:
        raise ConfigError(
            f"credentials file {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):04o})",
            hint=f"chmod 600 {path}",
        )
    try:
        return EnrollResponse.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"cannot read credentials file {path}: {exc.strerror or exc}", hint="check its owner"
        ) from None
    except ValidationError as exc:
        raise ConfigError(
            f"credentials file {path} is not an enrollment answer: {str(exc).splitlines()[0]}",
            hint="enroll again with edgectl-agent enroll --force",
        ) from None


def write_credentials(path: Path, credentials: EnrollResponse, *, force: bool) -> None:
    if path.exists() and not force:
        raise AgentError(
            f"credentials file {path} already exists; this device is enrolled",
            hint="pass --force to enroll again (the old device token stops being used)",
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps(credentials.model_dump(mode="json"), indent=1).encode(), CREDENTIALS_MODE)


def _read_secret_file(path: Path, what: str) -> SecretStr:
    try:
        info = os.stat(path)
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{what} {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):04o})",
                hint=f"chmod 600 {path}",
            )
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {path}: {exc.strerror or exc}", hint="check the path"
        ) from None


def _public_key_from_pem(pem: str, where: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        raise ConfigError(f"{where} holds a command key that is not PEM", hint="enroll again") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{where} holds a command key that is not Ed25519", hint="enroll again")
    return key


def load_keys(config: AgentConfig, credentials: EnrollResponse | None) -> Keys:
    from edgebundle import KeyFileError, key_id, load_public_key

    bundle: dict[str, Ed25519PublicKey] = {}
    commands: list[Ed25519PublicKey] = []
    try:
        for path in config.trusted_keys:
            key = load_public_key(path)
            bundle[key_id(key)] = key
        commands = [load_public_key(path) for path in config.command_keys]
    except KeyFileError as exc:
        raise ConfigError(
            exc.message, hint=exc.hint or "trusted_keys and command_keys name PEM public keys"
        ) from None
    if credentials is not None:
        commands += [
            _public_key_from_pem(pem, str(config.credentials_path)) for pem in credentials.command_public_keys
        ]
    return Keys(bundle=bundle, commands=commands)


def _broker(config: AgentConfig, credentials: EnrollResponse | None) -> BrokerSettings | None:
    mqtt = config.mqtt
    if not mqtt.enabled:
        return None
    common = {"ca_file": mqtt.ca_file, "protocol": mqtt.protocol, "max_inflight": mqtt.max_inflight}
    if mqtt.host is not None:
        password = _read_secret_file(mqtt.password_file, "MQTT password file") if mqtt.password_file else None
        return BrokerSettings(
            host=mqtt.host,
            port=mqtt.port,
            username=mqtt.username,
            password=password,
            tls=mqtt.tls,
            keepalive_s=mqtt.keepalive_s,
            **common,
        )
    if credentials is not None and credentials.mqtt is not None:
        given = credentials.mqtt
        return BrokerSettings(
            host=given.host,
            port=given.port,
            username=given.username,
            password=SecretStr(given.password),
            tls=given.tls,
            keepalive_s=given.keepalive_s,
            **common,
        )
    return None


def resolve_identity(config: AgentConfig) -> tuple[Identity, Keys]:
    credentials = read_credentials(config.credentials_path)

    def pick(what: str, configured: str | None, enrolled: str | None) -> str:
        if configured and enrolled and configured != enrolled:
            raise ConfigError(
                f"device.{what} is {configured!r} in the config but the credentials say {enrolled!r}",
                hint=f"remove device.{what} from the config, or enroll again",
            )
        value = configured or enrolled
        if not value:
            raise ConfigError(
                f"this device has no {what} id: it is not enrolled and device.{what} is not set",
                hint="run edgectl-agent enroll, or set device.id and device.fleet in the config",
            )
        return value

    device = pick("id", config.device.id, credentials.device if credentials else None)
    fleet = pick("fleet", config.device.fleet, credentials.fleet if credentials else None)
    token = SecretStr(credentials.device_token) if credentials else None
    keys = load_keys(config, credentials)
    return Identity(device, fleet, token, _broker(config, credentials), keys.commands), keys
