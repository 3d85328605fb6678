"""No single message stops ingest (issue 16, defect 1).

A message the database cannot hold (here `inference.count = 10**20`, valid on the wire) is checked out
before it joins a batch; one that still fails its batch is isolated by halving the batch; either way it is
dropped, counted, acknowledged (a restarted registry is not handed it again), and the others are stored.
Only a database that is unavailable is retried. Against a real Mosquitto, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from cloud_registry import models as m
from cloud_registry.ingest import Incoming, IngestWriter, unstorable
from edgewire.messages import dump_payload
from edgewire.topics import Topics
from tests.cloud_registry.conftest import make_settings
from tests.cloud_registry.helpers import presence, telemetry, update_status
from tests.cloud_registry.mqtt_sim import MqttDevice, enroll_devices, wait_for
from tests.services import Mosquitto


def _poison(device: str, seq: int):  # type: ignore[no-untyped-def]
    message = telemetry(device, seq)
    message.inference.count = 10**20  # valid JSON and a valid Telemetry; no INTEGER column holds it
    return message


def _stored(registry, device: str | None = None) -> int:  # type: ignore[no-untyped-def]
    with registry.factory() as session:
        query = select(func.count()).select_from(m.TelemetryRecord).join(m.Device)
        if device is not None:
            query = query.where(m.Device.name == device)
        return session.scalar(query) or 0


def _enroll(registry, *names: str) -> None:  # type: ignore[no-untyped-def]
    enroll_devices(registry, list(names))


@pytest.fixture
def database_url(backend, request) -> str:  # type: ignore[no-untyped-def]
    return request.getfixturevalue("postgres").database() if backend == "postgresql" else ""


def test_a_poison_message_is_dropped_and_the_fleet_goes_on_across_a_restart(
    tmp_path, signing, backend, database_url, caplog
):
    from cloud_registry.service import Registry

    broker = Mosquitto(tmp_path / "broker").start()
    settings = make_settings(
        tmp_path / "registry",
        signing[1],
        database_url,
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        mqtt_client_id=f"registry-{time.monotonic_ns()}",  # one persistent session for both runs
        ingest_flush_s=0.05,
    )
    registry = Registry(settings)
    devices: list[MqttDevice] = []
    try:
        registry.start()
        assert registry.link.subscribed.wait(20)
        _enroll(registry, "dev-a", "dev-b")
        dev_a, dev_b = MqttDevice(broker.port, "dev-a"), MqttDevice(broker.port, "dev-b")
        devices += [dev_a, dev_b]
        assert dev_a.wait_connected() and dev_b.wait_connected()
        with caplog.at_level(logging.WARNING, logger="cloud_registry.ingest"):
            dev_a.publish(_poison("dev-a", 1))
            for seq in range(1, 11):
                dev_b.publish(telemetry("dev-b", seq))
            dev_a.publish(telemetry("dev-a", 2))
            wait_for(lambda: _stored(registry) == 11)
        stats = registry.ingest.stats
        assert stats.dropped == 1 and _stored(registry, "dev-b") == 10 and _stored(registry, "dev-a") == 1
        assert "10000000000" not in caplog.text and "dev-a" in caplog.text  # kind and device, not content
        registry.stop()

        # The same registry session again: the poison was acknowledged, so the broker has nothing to redeliver.
        registry = Registry(settings)
        registry.start()
        assert registry.link.subscribed.wait(20)
        for seq in range(11, 16):
            dev_b.publish(telemetry("dev-b", seq))
        wait_for(lambda: _stored(registry, "dev-b") == 15)
        assert registry.ingest.stats.dropped == 0 and registry.ingest.stats.errors == 0
    finally:
        for device in devices:
            device.close()
        registry.stop()
        broker.stop()


def _items(messages) -> list[Incoming]:  # type: ignore[no-untyped-def]
    return [
        Incoming(Topics(msg.fleet, msg.device).data(msg.kind), dump_payload(msg), mid=i + 1, qos=1)
        for i, msg in enumerate(messages)
    ]


def _write(writer: IngestWriter, items: list[Incoming]) -> None:
    """writer.write on a thread: a writer that retries forever is stopped and fails the test, not hangs it."""
    import threading

    thread = threading.Thread(target=writer.write, args=(items,), daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        writer.stop(timeout=5)  # its retry loop gives up when stopped
        pytest.fail("the ingest writer is still retrying the batch")


@pytest.fixture
def writer_registry(tmp_path, signing, database_url):  # type: ignore[no-untyped-def]
    """A registry without MQTT (its database and devices), for driving an IngestWriter by hand."""
    from cloud_registry.service import Registry

    registry = Registry(make_settings(tmp_path / "registry", signing[1], database_url))
    registry.start()
    _enroll(registry, "dev-a", "dev-b")
    yield registry
    registry.stop()


def test_a_batch_the_database_refuses_is_halved_until_the_poison_is_alone(
    writer_registry, backend, monkeypatch
):
    """The check before batching is the first line; halving is the second, for what it does not foresee."""
    monkeypatch.setattr("cloud_registry.ingest.unstorable", lambda message, payload=None: None)
    acked: list[int] = []
    writer = IngestWriter(writer_registry.factory, ack=lambda items: acked.extend(mid for mid, _ in items))
    good = [telemetry("dev-b", seq) for seq in range(1, 20)]
    batch = [*good[:7], _poison("dev-a", 1), *good[7:], presence("dev-a", 3)]
    _write(writer, _items(batch))
    stats = writer.stats
    assert (stats.poison, stats.dropped, stats.stored) == (1, 1, 20), stats
    assert _stored(writer_registry, "dev-b") == 19 and _stored(writer_registry, "dev-a") == 0
    assert sorted(acked) == list(range(1, 22))  # every message acknowledged, the poison too
    with writer_registry.factory() as session:
        assert session.scalar(select(m.Device.presence_session).where(m.Device.name == "dev-a")) == 3


def test_an_unavailable_database_is_retried_not_dropped(writer_registry, backend, monkeypatch):
    from cloud_registry import ingest

    real, calls = ingest.apply_messages, []

    def flaky(session, messages, stats):  # type: ignore[no-untyped-def]
        calls.append(len(messages))
        if len(calls) == 1:
            raise sa_exc.OperationalError("INSERT", {}, Exception("connection refused"))
        return real(session, messages, stats)

    monkeypatch.setattr(ingest, "apply_messages", flaky)
    writer = IngestWriter(writer_registry.factory)
    _write(writer, _items([telemetry("dev-b", seq) for seq in range(1, 6)]))
    assert calls == [5, 5]  # the same batch again, not halved
    assert (writer.stats.dropped, writer.stats.stored, writer.stats.errors) == (0, 5, 1)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: setattr(t.inference, "count", 10**20),
        lambda t: setattr(t.inference, "errors", 2**31),
        lambda t: setattr(t.model, "version", 2**31),
        lambda t: setattr(t.model, "name", "m" * 129),
        lambda t: setattr(t.model, "name", "digits\x00"),
        lambda t: setattr(t.queue, "pending", 10**30),
        lambda t: setattr(t.system, "cpu_percent", float("nan")),
    ],
)
def test_what_no_column_holds_is_refused_before_batching(change):
    from edgewire.messages import QueueStats

    message = telemetry("dev-a", 1)
    message.queue = QueueStats(pending=0, dropped_total=0)
    assert unstorable(message) is None
    change(message)
    assert unstorable(message)


@pytest.mark.parametrize("rollout_id", [-(10**20), 2**31])
def test_update_status_numbers_are_bounded_both_ways(rollout_id):
    message = update_status("dev-a", 1, update_id="u", state="SUCCEEDED", to_version=2)
    message.rollout_id = rollout_id
    assert unstorable(message) == "a number beyond its 32-bit column"
