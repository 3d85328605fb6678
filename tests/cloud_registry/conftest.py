"""Registry fixtures: signing keys, a registry app per test (SQLite, or PostgreSQL for `backend`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import Postgres

ADMIN_TOKEN = "edr_test-admin-token-0123456789abcdef"


@pytest.fixture(scope="session")
def signing(tmp_path_factory: pytest.TempPathFactory):
    """(private key, public key path) of the build host that signs bundles."""
    from edgebundle import generate_keypair, load_private_key

    private, public = generate_keypair(tmp_path_factory.mktemp("signing"))
    return load_private_key(private), public


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres().start()
    yield server
    server.stop()


@dataclass
class Api:
    """A TestClient on a registry, and helpers to call it as admin or as a device."""

    client: object
    registry: object
    data_dir: Path

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def token(self, role: str, name: str | None = None) -> dict[str, str]:
        response = self.client.post(
            "/api/v1/tokens", json={"name": name or f"t-{role}", "role": role}, headers=self.admin()
        )
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def push(self, archive: Path, headers: dict[str, str] | None = None):
        return self.client.post(
            "/api/v1/bundles",
            content=archive.read_bytes(),
            headers={**(headers or self.admin()), "Content-Type": "application/octet-stream"},
        )

    def enroll(
        self, name: str, target: str = "cpu", *, group: str | None = None, tags: list[str] | None = None
    ):
        token = self.client.post(
            "/api/v1/enrollment-tokens", json={"group": group, "tags": tags or []}, headers=self.admin()
        )
        assert token.status_code == 201, token.text
        response = self.client.post(
            "/v1/enroll", json={"token": token.json()["token"], "name": name, "target": target}
        )
        assert response.status_code == 200, response.text
        return response.json()


def make_settings(data_dir: Path, public_key: Path, database_url: str = "", **extra):
    from cloud_registry.core.config import Settings

    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        trusted_keys=[public_key],
        # Tests drive the reconciler by hand unless they say otherwise.
        **{"reconcile_interval_s": 3600, **extra},
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def api(tmp_path: Path, signing, request: pytest.FixtureRequest) -> Iterator[Api]:
    """A registry on SQLite, or on PostgreSQL when the test also takes `backend` and it says so."""
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app

    database_url = ""
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "postgresql":
        database_url = request.getfixturevalue("postgres").database()
    app = create_app(make_settings(tmp_path / "registry", signing[1], database_url))
    with TestClient(app) as client:
        yield Api(client, app.state.registry, tmp_path / "registry")


@dataclass
class Live:
    """A registry served by uvicorn on a free loopback port (real HTTP, for the CLI, browser and schemathesis)."""

    url: str
    registry: object
    data_dir: Path


@contextlib.contextmanager
def served(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app served by uvicorn on a free loopback port while the block runs; yields its URL."""
    import threading
    import time

    import uvicorn

    from tests.services import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the registry did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture
def live(tmp_path: Path, signing) -> Iterator[Live]:
    from cloud_registry.main import create_app

    app = create_app(make_settings(tmp_path / "registry", signing[1]))
    with served(app) as url:
        yield Live(url, app.state.registry, tmp_path / "registry")


def secured_broker(tmp_path: Path, public_key: Path, **extra):
    """A broker that will start from the config the registry writes (cloud_registry.mosquitto), and the registry's settings.

    Start the registry first (it writes mosquitto.conf, password files and ACLs on start), then `broker.start()`.
    `broker.port` is the device listener; the registry connects to its own listener (`settings.mqtt_port`). The
    broker writes its pid to `tmp_path / "broker.pid"`, so each enrollment's rewrite reaches it as a SIGHUP.
    """
    from tests.services import ConfiguredMosquitto, free_port

    mosquitto_dir = tmp_path / "mq"
    broker = ConfiguredMosquitto(tmp_path / "broker", config_file=mosquitto_dir / "mosquitto.conf")
    settings = make_settings(
        tmp_path / "registry",
        public_key,
        mqtt_host="127.0.0.1",
        mqtt_port=free_port(),
        mqtt_username="registry",
        mqtt_password="registry-secret-0123456789",
        device_mqtt_port=broker.port,
        mosquitto_device_bind="127.0.0.1",
        mosquitto_dir=mosquitto_dir,
        mosquitto_pid_file=tmp_path / "broker.pid",
        **extra,
    )
    return broker, settings


@contextlib.contextmanager
def secured_fleet(tmp_path: Path, public_key: Path, **extra) -> Iterator[tuple[str, object, object]]:
    """The registry served over HTTP and the broker of `secured_broker`, started in the order that works.

    The registry first (it writes the password file and ACL), then the broker, its pid for the SIGHUPs,
    then a wait for the registry's subscription: telemetry sent before it is not kept for the registry
    (update statuses are, retained). Yields (url, registry, broker); stops the registry, then the broker.
    """
    from cloud_registry.main import create_app
    from tests.device_agent.harness import wait_for

    broker, settings = secured_broker(tmp_path, public_key, **extra)
    app = create_app(settings)
    with contextlib.ExitStack() as stack:
        stack.callback(broker.stop)
        url = stack.enter_context(served(app))
        broker.start()
        wait_for(app.state.registry.link.subscribed.is_set, "the registry's MQTT subscription", 40)
        yield url, app.state.registry, broker
