"""The whole Mosquitto config for the fleet, with its password files and ACLs, from the registry's records.

The broker the registry writes for (`mosquitto_dir`) has two listeners, each with its own
users (`per_listener_settings true`):

- the device listener (`mosquitto_device_bind`:`device_mqtt_port`): only enrolled devices
  log in there, and `use_username_as_clientid` makes each one's client id its username
  (= its device id), whatever client id it sent; so no device's credentials can take over
  another device's session or the registry's. Its ACL gives every device, by pattern on its
  username, only its own topics:

      pattern write edgectl/data/<fleet>/%u/#     its presence, telemetry, update status
      pattern read  edgectl/cmd/<fleet>/%u/#      its desired model

- the registry listener (`mqtt_host`:`mqtt_port`): only the registry's user logs in there,
  with the client id it chooses (`mqtt_client_id`, one persistent session per replica); it
  reads the whole data tree and writes commands.

Client ids are one namespace across listeners, so a device whose id is this registry's client
id is left out of the device password file (it could not log in without ending the registry's
session). `persistence true` keeps sessions and QoS 1 messages the broker acknowledged across
its restarts. Device ids are `[a-z0-9-]`, so `%u` can never widen into another device's tree.
Mosquitto reloads the password files and ACLs on SIGHUP; listeners and persistence are read when
it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgewire.topics import COMMAND, DATA, ROOT, check_id

if TYPE_CHECKING:
    from cloud_registry.core.config import Settings

log = logging.getLogger("cloud_registry.mosquitto")

CONFIG, PID = "mosquitto.conf", "mosquitto.pid"
DEVICE_PASSWD, DEVICE_ACL = "mosquitto.passwd", "mosquitto.acl"
REGISTRY_PASSWD, REGISTRY_ACL = "registry.passwd", "registry.acl"
# Per client: the registry's session holds what arrives while it is away. At 10,000 messages/s this is
# 100 s of the whole fleet's telemetry; agents keep their own queue on disk beyond that.
MAX_QUEUED_MESSAGES = 1_000_000


@dataclass(frozen=True)
class BrokerUser:
    username: str
    password_hash: str


def password_file(users: list[BrokerUser]) -> str:
    lines = []
    for user in sorted(users, key=lambda u: u.username):
        if ":" in user.username or "\n" in user.username or "\n" in user.password_hash:
            raise ValueError(f"unusable broker username {user.username!r}")
        lines.append(f"{user.username}:{user.password_hash}")
    return "\n".join(lines) + "\n"


def _registry_acl(registry_user: str) -> list[str]:
    return [f"user {registry_user}", f"topic read {ROOT}/{DATA}/#", f"topic readwrite {ROOT}/{COMMAND}/#"]


def _device_acl(fleet: str) -> list[str]:
    check_id(fleet, "fleet id")
    return [
        "# Every device: write its own data, read its own commands, nothing else.",
        f"pattern write {ROOT}/{DATA}/{fleet}/%u/#",
        f"pattern read {ROOT}/{COMMAND}/{fleet}/%u/#",
    ]


def _text(lines: list[str]) -> str:
    return "\n".join(["# Written by the edgectl registry; edits are overwritten.", "", *lines]) + "\n"


def acl_file(fleet: str, registry_user: str | None) -> str:
    """One ACL for a broker with one listener (`edgectl registry broker-files`, the API's file)."""
    lines = [*_registry_acl(registry_user), ""] if registry_user else []
    return _text(lines + _device_acl(fleet))


@dataclass(frozen=True)
class Listener:
    host: str  # "": every interface
    port: int


@dataclass(frozen=True)
class BrokerLayout:
    """Where the broker listens and keeps its files; from the registry's settings (`layout`)."""

    directory: Path
    devices: Listener
    registry: Listener | None  # None: the registry does not connect to MQTT
    pid_file: Path
    autosave_s: int
    reserved_ids: frozenset[str]  # client ids no device may take (this registry's)


def layout(settings: Settings) -> BrokerLayout:
    """The broker that `settings` describe; ValueError (one sentence) when they cannot make one."""
    if settings.mosquitto_dir is None:
        raise ValueError("mosquitto_dir is not set")
    directory = settings.mosquitto_dir.resolve()
    device_port = settings.device_mqtt_port or settings.mqtt_port
    registry = None
    if settings.mqtt_host:
        if not settings.mqtt_username or settings.mqtt_password is None:
            raise ValueError(
                "mosquitto_dir with mqtt_host needs mqtt_username and mqtt_password: the broker's "
                "registry listener takes only the registry's user"
            )
        if device_port == settings.mqtt_port:
            raise ValueError(
                f"the broker needs two ports: device_mqtt_port (devices) must differ from mqtt_port "
                f"{settings.mqtt_port} (the registry's own listener)"
            )
        registry = Listener(settings.mqtt_host, settings.mqtt_port)
    for text in (settings.mosquitto_device_bind, settings.mqtt_host or ""):
        if any(c.isspace() for c in text):
            raise ValueError(f"unusable broker address {text!r}")
    pid_file = (settings.mosquitto_pid_file or directory / PID).resolve()
    for path in (directory, pid_file):
        if any(c in str(path) for c in "\n\r\0"):  # one line each in mosquitto.conf
            raise ValueError(f"unusable broker path {str(path)!r}")
    return BrokerLayout(
        directory=directory,
        devices=Listener(settings.mosquitto_device_bind, device_port),
        registry=registry,
        pid_file=pid_file,
        autosave_s=settings.mosquitto_autosave_s,
        reserved_ids=frozenset({settings.mqtt_client_id}),
    )


def _run_as() -> str | None:
    """The name of the user this process runs as, which owns the files (None: no name for the uid)."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


def config_file(broker: BrokerLayout, run_as: str | None = None) -> str:
    """mosquitto.conf: persistence, the pid file, and the device and registry listeners with their files."""
    d = broker.directory
    lines = [
        # A broker started as root drops to this user before it writes its pid file and reads the files
        # below (0600, owned by the registry's user); started as that user already, the line does nothing.
        *([f"user {run_as}"] if run_as else []),
        f"pid_file {broker.pid_file}",
        "persistence true",
        f"persistence_location {d}/",
        f"autosave_interval {broker.autosave_s}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "log_dest stderr",
        *(f"log_type {kind}" for kind in ("error", "warning", "notice")),  # not each autosave
        "per_listener_settings true",
        "",
        "# Devices: the client id is the username (the device id), so nobody takes another's session.",
        f"listener {broker.devices.port}{f' {broker.devices.host}' if broker.devices.host else ''}",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"password_file {d / DEVICE_PASSWD}",
        f"acl_file {d / DEVICE_ACL}",
    ]
    if broker.registry is not None:
        lines += [
            "",
            "# The registry: its own user only, with its own client id (one persistent session per replica).",
            f"listener {broker.registry.port} {broker.registry.host}",
            "allow_anonymous false",
            f"password_file {d / REGISTRY_PASSWD}",
            f"acl_file {d / REGISTRY_ACL}",
        ]
    return _text(lines)


def broker_files(
    broker: BrokerLayout, fleet: str, devices: list[BrokerUser], registry: BrokerUser | None
) -> dict[str, str]:
    """Every file the broker reads, by name in `broker.directory`."""
    kept = []
    for user in devices:
        if user.username in broker.reserved_ids:
            log.warning(
                "device %s is left out of the broker's password file: its id is the registry's", user.username
            )
            continue
        kept.append(user)
    files = {
        CONFIG: config_file(broker, _run_as()),
        DEVICE_PASSWD: password_file(kept),
        DEVICE_ACL: _text(_device_acl(fleet)),
    }
    if broker.registry is not None and registry is not None:
        files[REGISTRY_PASSWD] = password_file([registry])
        files[REGISTRY_ACL] = _text(_registry_acl(registry.username))
    return files


def _write_atomic(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.chmod(directory, 0o700)  # it holds the broker's database (telemetry) and password hashes
    except OSError as exc:
        log.warning("cannot make %s private (0700): %s", directory, exc.strerror)


def _reload(pid_file: Path | None) -> None:
    if pid_file is not None:
        # No broker to reload (yet) is fine: it reads the files when it starts.
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)


def write_broker(broker: BrokerLayout, files: dict[str, str]) -> None:
    """Write the broker's files atomically (0600, folder 0700), then SIGHUP the broker of the pid file."""
    _private_dir(broker.directory)
    for name, text in files.items():
        _write_atomic(broker.directory / name, text)
    _reload(broker.pid_file)


def write_files(directory: Path, passwd: str, acl: str, pid_file: Path | None = None) -> tuple[Path, Path]:
    """Write mosquitto.passwd and mosquitto.acl atomically (0600), and SIGHUP the broker whose pid file is given."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwd_path, acl_path = directory / DEVICE_PASSWD, directory / DEVICE_ACL
    _write_atomic(passwd_path, passwd)
    _write_atomic(acl_path, acl)
    _reload(pid_file)
    return passwd_path, acl_path
