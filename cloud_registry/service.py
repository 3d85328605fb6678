"""The running registry: settings, database, store, keys, MQTT link, ingest writer, reconciler and the
retraining loop.

`Registry.start()` migrates the database, makes sure the bootstrap token and
the command key exist, connects to MQTT (when configured) and starts the
reconciler and retraining threads; the FastAPI app (cloud_registry.main) holds one Registry.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_registry import crud, db, mosquitto, webhooks
from cloud_registry import devices as device_records
from cloud_registry.core.config import Settings
from cloud_registry.core.files import private_dir
from cloud_registry.crud import Publication
from cloud_registry.ingest import Incoming, IngestWriter
from cloud_registry.jobs.manager import JobManager
from cloud_registry.reconciler import Reconciler
from cloud_registry.retention import Retention
from cloud_registry.storage import ArtifactStore, make_store
from edgebundle.signing import key_id, load_private_key, load_public_key

log = logging.getLogger("cloud_registry")


def load_or_create_command_key(path: Path) -> Ed25519PrivateKey:
    """The key that signs rollback orders; created (mode 0600) on first start when absent."""
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    log.info("created the command signing key %s (key id %s)", path, key_id(key))
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class Registry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        private_dir(settings.data_dir)  # 0700: the database, the command key, artifacts, job folders
        self.engine = db.make_engine(settings.sqlalchemy_url)
        self.factory = db.session_factory(self.engine)
        webhooks.configure(self.factory, settings.webhook_urls)  # events are queued for these URLs
        self.store: ArtifactStore = make_store(settings)
        self.trusted_keys: dict[str, Ed25519PublicKey] = {}
        for path in settings.trusted_keys:
            key = load_public_key(path)
            self.trusted_keys[key_id(key)] = key
        self.command_key = load_or_create_command_key(settings.command_key_path)
        self.link = None
        self.ingest: IngestWriter | None = None
        self.reconciler = Reconciler(
            self.factory, command_key=self.command_key, public_url=settings.public_url, publish=self.publish
        )
        self.retention = Retention(
            self.factory,
            retention_s=settings.telemetry_retention_s,
            interval_s=settings.telemetry_rollup_interval_s,
        )
        self.jobs = JobManager(
            self.factory,
            settings=settings,
            store=self.store,
            trusted_keys=self.trusted_keys,
            publish=self.publish,
            command_key=self.command_key,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retrain_thread: threading.Thread | None = None
        self._files_lock = threading.Lock()
        self.webhooks: webhooks.Deliverer | None = None
        if settings.webhook_urls and settings.webhook_secret is not None:
            self.webhooks = webhooks.Deliverer(
                self.factory,
                urls=settings.webhook_urls,
                secret=settings.webhook_secret.get_secret_value().encode(),
                timeout_s=settings.webhook_timeout_s,
                max_attempts=settings.webhook_max_attempts,
                backoff_s=settings.webhook_backoff_s,
                backoff_max_s=settings.webhook_backoff_max_s,
            )

    # lifecycle

    def start(self) -> None:
        db.migrate(self.engine)
        if self.settings.admin_token is not None:
            with db.transaction(self.factory) as session:
                crud.ensure_bootstrap_token(session, token=self.settings.admin_token.get_secret_value())
        self.write_broker_files()
        if self.settings.mqtt_host:
            from cloud_registry.mqtt_link import MqttLink

            self.link = MqttLink(self.settings, self._on_mqtt_message, self.republish_desired)
            self.ingest = IngestWriter(
                self.factory,
                batch_size=self.settings.ingest_batch_size,
                flush_s=self.settings.ingest_flush_s,
                ack=self.link.ack_many,
                writers=self.settings.ingest_writers or (1 if self.engine.dialect.name == "sqlite" else 2),
            )
            self.ingest.start()
            self.link.start()
        self._thread = threading.Thread(target=self._reconcile_loop, name="reconciler", daemon=True)
        self._thread.start()
        self.jobs.start()
        self._retrain_thread = threading.Thread(target=self._retrain_loop, name="retraining", daemon=True)
        self._retrain_thread.start()
        if self.webhooks is not None:
            self.webhooks.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._retrain_thread is not None:
            self._retrain_thread.join(30)
            self.jobs.close()
        if self.link is not None:
            self.link.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.webhooks is not None:
            self.webhooks.stop()
        self.engine.dispose()

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(self.settings.reconcile_interval_s):
            try:
                self.reconciler.tick()
            except Exception:
                log.exception("reconciler tick failed")
            self.retention.tick()  # raw telemetry past its retention into hourly aggregates

    def _retrain_loop(self) -> None:
        while not self._stop.wait(self.settings.retrain_interval_s):
            self.jobs.tick()

    # MQTT

    def _on_mqtt_message(self, message) -> None:  # type: ignore[no-untyped-def]
        assert self.ingest is not None
        self.ingest.put(Incoming(message.topic, message.payload, message.mid, message.qos))

    def publish(self, publications: list[Publication]) -> None:
        if self.link is None:
            return
        for item in publications:
            self.link.publish_desired(item.fleet, item.device, item.payload)

    def republish_desired(self) -> None:
        with self.factory() as session:
            publications = crud.all_desired(session)
        self.publish(publications)

    # broker files

    def _broker_users(self) -> tuple[list[mosquitto.BrokerUser], mosquitto.BrokerUser | None]:
        """(the enrolled devices, the registry's own user when it has one)."""
        with self.factory() as session:
            users = [
                mosquitto.BrokerUser(name, digest) for name, digest in device_records.broker_users(session)
            ]
        registry_user = self.settings.mqtt_username
        if registry_user and self.settings.mqtt_password is not None:
            from cloud_registry.core.security import mosquitto_hash

            password = self.settings.mqtt_password.get_secret_value()
            return users, mosquitto.BrokerUser(registry_user, mosquitto_hash(password))
        return users, None

    def broker_files(self) -> tuple[str, str]:
        """One password file and ACL for a broker of one listener (the API's files)."""
        users, registry = self._broker_users()
        passwd = mosquitto.password_file(users + ([registry] if registry else []))
        return passwd, mosquitto.acl_file(self.settings.fleet, self.settings.mqtt_username)

    def write_broker_files(self) -> None:
        """The broker's whole config in `mosquitto_dir` (cloud_registry.mosquitto), then a SIGHUP to reload it."""
        if self.settings.mosquitto_dir is None:
            return
        with self._files_lock:
            broker = mosquitto.layout(self.settings)
            users, registry = self._broker_users()
            mosquitto.write_broker(
                broker, mosquitto.broker_files(broker, self.settings.fleet, users, registry)
            )
