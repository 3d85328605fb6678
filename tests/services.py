"""Real services for integration tests: a Mosquitto broker on a free loopback port.

Shared by the device agent and registry tests. The broker is the real
`mosquitto` binary from Debian's package (the Makefile's install step puts it
there); a test that needs one gets a skip-free failure if it is missing,
because CI installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def mosquitto_binary() -> str:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("mosquitto is not installed; run `make install` (it installs Debian's mosquitto)")


@dataclass
class Mosquitto:
    """One broker process. `stop()` / `start()` keep the port and the persistence file, like a restart."""

    workdir: Path
    port: int = field(default_factory=free_port)
    password_file: Path | None = None
    acl_file: Path | None = None
    persistence: bool = True
    process: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "protocol mqtt",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_queued_messages 100000",
        ]
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def start(self) -> Mosquitto:
        self.write_config()
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 (lives as long as the process)
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_path)],
            stdout=log,
            stderr=log,
            env={**os.environ},
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


# --------------------------------------------------------------------------- PostgreSQL

POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def postgres_bin_dir() -> Path:
    import glob

    found = sorted(glob.glob(POSTGRES_BIN_GLOB), key=lambda p: int(Path(p).parent.name.split(".")[0]))
    for candidate in reversed(found):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise RuntimeError(
        "PostgreSQL server binaries not found; run `make install` (it installs Debian's postgresql)"
    )


@dataclass
class Postgres:
    """A throw-away PostgreSQL server on a free loopback port, run as the `postgres` OS user when root.

    `database()` creates a fresh database and returns its SQLAlchemy URL (psycopg 3), so tests
    share one server but never each other's tables.
    """

    port: int = field(default_factory=free_port)
    workdir: Path | None = None
    process: subprocess.Popen | None = None
    _counter: int = 0

    def _as_postgres(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def start(self) -> Postgres:
        import tempfile

        bin_dir = postgres_bin_dir()
        self.workdir = Path(tempfile.mkdtemp(prefix="edgectl-pg-"))
        data = self.workdir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        subprocess.run(
            self._as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        log = open(self.workdir / "postgres.log", "ab")  # noqa: SIM115 (lives as long as the process)
        self.process = subprocess.Popen(
            self._as_postgres(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.workdir),
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ]
            ),
            stdout=log,
            stderr=log,
        )
        wait_for_port(self.port, timeout=30)
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        import psycopg

        self._counter += 1
        name = f"test_{os.getpid()}_{self._counter}"
        for _ in range(50):  # the port answers a moment before the server takes connections
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
                ) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                return self.url(name)
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL on port {self.port} does not take connections")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class ConfiguredMosquitto(Mosquitto):
    """A broker started from a config written elsewhere: the registry's `mosquitto.conf` (cloud_registry.mosquitto).

    `port` is the port it is waited on (the device listener); `workdir` holds only its log.
    """

    config_file: Path | None = None

    @property
    def config_path(self) -> Path:
        assert self.config_file is not None, "ConfiguredMosquitto needs config_file"
        return self.config_file

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.config_path


class RootMosquitto(Mosquitto):
    """A broker that keeps root when started as root (`user root`).

    Mosquitto started as root drops to its own user before it reads its password file and ACL,
    and that user cannot enter pytest's private temporary folders; the registry's tests write
    those files there.
    """

    def write_config(self) -> Path:
        path = super().write_config()
        if os.geteuid() == 0:
            path.write_text(path.read_text() + "user root\n")
        return path


# --------------------------------------------------------------------------- MQTT subscriber


@dataclass
class MqttCollector:
    """A subscriber that records every message (topic, payload, retain flag) in arrival order.

    With `persistent=True` it keeps a broker-side session (clean session off, fixed client id,
    QoS 1), so messages published while it is away, or while the broker restarts with
    persistence on, are delivered when it is back. paho reconnects on its own.
    """

    port: int
    topic: str = "#"
    client_id: str = "test-collector"
    persistent: bool = True
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    client: object = None

    def start(self, timeout: float = 10.0) -> MqttCollector:
        import threading

        import paho.mqtt.client as mqtt

        subscribed = threading.Event()
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=not self.persistent,
        )
        client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)

        def on_connect(client, userdata, flags, reason_code, properties) -> None:
            client.subscribe(self.topic, qos=1)

        client.on_connect = on_connect
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_message = lambda client, userdata, m: self.messages.append(
            (m.topic, bytes(m.payload), m.retain)
        )
        client.connect("127.0.0.1", self.port, keepalive=5)
        client.loop_start()
        if not subscribed.wait(timeout):
            raise TimeoutError(f"could not subscribe to {self.topic} on port {self.port}")
        self.client = client
        return self

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()  # type: ignore[attr-defined]
            self.client.loop_stop()  # type: ignore[attr-defined]
            self.client = None
