"""The registry against a real Mosquitto: batched ingest, duplicates, presence sessions, broker restarts,
retained desired states, MQTT 5 shared subscriptions across replicas, and the generated password file and
ACL that keep each device to its own topics."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from cloud_registry import models as m
from cloud_registry.crud import Publication
from tests.cloud_registry.conftest import Api, make_settings, secured_broker
from tests.cloud_registry.helpers import make_bundle, presence, telemetry
from tests.cloud_registry.mqtt_sim import MqttDevice, wait_for
from tests.services import Mosquitto


def _count(api_or_registry, model=m.TelemetryRecord) -> int:
    registry = getattr(api_or_registry, "registry", api_or_registry)
    with registry.factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def broker(tmp_path):
    server = Mosquitto(tmp_path / "broker").start()
    yield server
    server.stop()


@pytest.fixture
def mqtt_api(tmp_path, signing, broker):
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app

    settings = make_settings(
        tmp_path / "registry",
        signing[1],
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        mqtt_client_id=f"registry-{time.monotonic_ns()}",
        ingest_flush_s=0.05,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        assert api.registry.link.subscribed.wait(10)
        yield api


def test_ingest_batches_drops_duplicates_and_survives_a_broker_restart(mqtt_api, broker):
    mqtt_api.enroll("dev-1")
    device = MqttDevice(broker.port, "dev-1")
    assert device.wait_connected()
    first = [telemetry("dev-1", seq) for seq in range(1, 51)]
    for message in first:
        device.publish(message)
    device.publish(first[0])  # QoS 1 redelivery / agent resend: the same msg_id again
    wait_for(lambda: _count(mqtt_api) == 50)
    stats = mqtt_api.registry.ingest.stats
    wait_for(lambda: stats.duplicates == 1)
    assert stats.batches < 51  # written in batches, not one transaction per message

    device.close()
    broker.restart()
    assert wait_for(lambda: mqtt_api.registry.link.subscribed.is_set(), timeout=40)
    device = MqttDevice(broker.port, "dev-1")
    assert device.wait_connected()
    for seq in range(51, 61):
        device.publish(telemetry("dev-1", seq))
    wait_for(lambda: _count(mqtt_api) == 60)
    device.close()
    info = mqtt_api.client.get("/api/v1/devices/dev-1", headers=mqtt_api.admin()).json()
    assert info["last_telemetry"]["seq"] == 60


def test_the_registry_link_reads_its_socket_ahead(mqtt_api):
    """The read-ahead socket comes from paho's private `_create_socket`: a paho that renames it fails here."""
    from cloud_registry.mqtt_link import _ReadAhead

    assert isinstance(mqtt_api.registry.link.client.socket(), _ReadAhead)


def test_read_ahead_hands_out_the_bytes_asked_for_and_says_what_is_pending():
    import socket

    from cloud_registry.mqtt_link import _ReadAhead

    left, right = socket.socketpair()
    left.setblocking(False)
    reader = _ReadAhead(left)
    with pytest.raises(BlockingIOError):  # nothing there: what paho expects of a non-blocking socket
        reader.recv(1)
    right.sendall(b"\x30\x05hello\x30\x03abc")
    time.sleep(0.05)
    assert reader.recv(1) == b"\x30" and reader.pending() == 11
    assert reader.recv(1) == b"\x05" and reader.recv(5) == b"hello"
    assert reader.recv(100) == b"\x30\x03abc" and reader.pending() == 0
    assert reader.fileno() == left.fileno()  # everything else is the socket's own
    right.close()
    time.sleep(0.05)
    assert reader.recv(1) == b""  # closed by the peer, as paho knows it
    reader.close()


def test_presence_newest_session_wins_and_bad_payloads_are_dropped(mqtt_api, broker):
    mqtt_api.enroll("dev-1")
    device = MqttDevice(broker.port, "dev-1")
    assert device.wait_connected()
    device.publish(presence("dev-1", 8, "online", name="digits", version=1, slot="a"), retain=True)
    wait_for(lambda: mqtt_api.client.get("/api/v1/devices/dev-1", headers=mqtt_api.admin()).json()["online"])
    device.publish(presence("dev-1", 7, "offline"), retain=True)  # a late Last Will of the previous session
    device.client.publish(device.topics.telemetry, b"{not json", qos=1).wait_for_publish(5)
    device.publish(telemetry("dev-2", 1), topic=device.topics.telemetry)  # names another device
    device.publish(telemetry("dev-1", 1))
    wait_for(lambda: _count(mqtt_api) == 1)
    wait_for(lambda: mqtt_api.registry.ingest.stats.dropped >= 2)
    info = mqtt_api.client.get("/api/v1/devices/dev-1", headers=mqtt_api.admin()).json()
    assert info["online"] is True and info["model"]["version"] == 1
    device.publish(presence("dev-1", 8, "offline"), retain=True)  # this session's own Will
    wait_for(
        lambda: not mqtt_api.client.get("/api/v1/devices/dev-1", headers=mqtt_api.admin()).json()["online"]
    )
    device.close()


def test_rollout_gate_from_mqtt_telemetry_halts_and_publishes_retained_rollbacks(
    mqtt_api, broker, signing, tmp_path
):
    """Telemetry through the broker and the ingest thread; the reconciler thread decides; devices see retained orders."""
    for version in (1, 2):
        mqtt_api.push(make_bundle(tmp_path, signing[0], version=version))
    devices = {}
    for i in range(4):
        name = f"dev-{i}"
        mqtt_api.enroll(name)
        devices[name] = MqttDevice(broker.port, name)
        assert devices[name].wait_connected()
        devices[name].subscribe(devices[name].topics.command_subscription)
    seq = dict.fromkeys(devices, 0)

    def send(name, **kw):  # type: ignore[no-untyped-def]
        seq[name] += 1
        devices[name].publish(telemetry(name, seq[name], **kw))

    for name in devices:
        send(name, version=1, p95=10.0)
    wait_for(lambda: _count(mqtt_api) == 4)
    rollout = mqtt_api.client.post(
        "/api/v1/rollouts",
        json={
            "model": "digits",
            "version": 2,
            "waves": [25, 100],
            "policy": {"bake_s": 5, "min_inferences": 100},
        },
        headers=mqtt_api.admin(),
    ).json()
    first = wait_for(lambda: [n for n, d in devices.items() if d.messages("/desired")])
    assert len(first) == 1
    desired = devices[first[0]].messages("/desired")[-1]
    from tests.cloud_registry.helpers import update_status

    seq[first[0]] += 1
    devices[first[0]].publish(
        update_status(
            first[0],
            seq[first[0]],
            update_id=desired["update_id"],
            state="SUCCEEDED",
            to_version=2,
            from_version=1,
            rollout_id=rollout["id"],
        )
    )
    send(first[0], version=2, p95=20.0)  # twice as slow
    reconciler = mqtt_api.registry.reconciler
    for _ in range(100):
        reconciler.tick()
        info = mqtt_api.client.get(f"/api/v1/rollouts/{rollout['id']}", headers=mqtt_api.admin()).json()
        if info["state"] != "running":
            break
        time.sleep(0.05)
    assert info["state"] == "halted" and "p95_regression 1 > 0.25" in info["reason"]
    back = wait_for(lambda: [m for m in devices[first[0]].messages("/desired") if m.get("rollback")])
    assert back[-1]["version"] == 1 and back[-1]["rollback"]["device"] == first[0]
    # A device that connects later still gets its retained desired state.
    late = MqttDevice(broker.port, "late-reader")
    late.subscribe(devices[first[0]].topics.desired)
    assert wait_for(lambda: late.messages("/desired"))[-1]["version"] == 1
    assert not any(d.messages("/desired") for n, d in devices.items() if n != first[0])
    for d in [*devices.values(), late]:
        d.close()


def test_a_registry_that_subscribes_late_learns_how_updates_ended_from_the_retained_status(
    tmp_path, signing, broker
):
    """The registry's first connection comes after the device finished (the race CI once lost)."""
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app
    from tests.cloud_registry.helpers import update_status

    data_dir = tmp_path / "registry"
    offline = create_app(make_settings(data_dir, signing[1]))  # no broker configured yet
    with TestClient(offline) as client:
        api = Api(client, offline.state.registry, data_dir)
        api.push(make_bundle(tmp_path, signing[0], version=1))
        api.enroll("dev-1")
        rollout = client.post(
            "/api/v1/rollouts",
            json={"model": "digits", "version": 1, "waves": [100], "policy": {"bake_s": 0}},
            headers=api.admin(),
        ).json()
        with api.registry.factory() as session:
            update_id = session.scalar(select(m.RolloutDevice.update_id))
    device = MqttDevice(broker.port, "dev-1")
    assert device.wait_connected()
    for seq, state in enumerate(["QUEUED", "INSTALLING", "SUCCEEDED"], start=1):
        message = update_status(
            "dev-1", seq, update_id=update_id, state=state, to_version=1, rollout_id=rollout["id"]
        )
        device.publish(message, retain=True).wait_for_publish(5)
    online = create_app(
        make_settings(
            data_dir,
            signing[1],
            mqtt_host="127.0.0.1",
            mqtt_port=broker.port,
            mqtt_client_id=f"registry-late-{time.monotonic_ns()}",  # a session the broker never saw
            ingest_flush_s=0.05,
        )
    )
    with TestClient(online) as client:
        registry = online.state.registry
        assert registry.link.subscribed.wait(10)

        def entry_state() -> str | None:
            with registry.factory() as session:
                return session.scalar(select(m.RolloutDevice.state))

        assert wait_for(lambda: entry_state() == "succeeded")
        registry.reconciler.tick()
        info = client.get(f"/api/v1/rollouts/{rollout['id']}", headers=api.admin()).json()
        assert info["state"] == "completed", info["decisions"]
    device.close()


def test_shared_subscription_splits_the_stream_across_replicas(tmp_path, signing, broker):
    from cloud_registry.service import Registry

    data = tmp_path / "shared"
    replicas = []
    for index in range(2):
        settings = make_settings(
            data,
            signing[1],
            mqtt_host="127.0.0.1",
            mqtt_port=broker.port,
            mqtt_client_id=f"replica-{index}-{time.monotonic_ns()}",
            mqtt_share_group="registry",
            ingest_flush_s=0.05,
        )
        replica = Registry(settings)
        replica.start()
        assert replica.link.subscribed.wait(10)
        replicas.append(replica)
    try:
        from cloud_registry import devices as device_records
        from edgewire.device_api import EnrollRequest

        with replicas[0].factory() as session, session.begin():
            from registry_api.schemas import EnrollmentTokenCreate

            _, secret = device_records.create_enrollment_token(
                session, body=EnrollmentTokenCreate(), created_by="t", default_ttl_s=60
            )
            device_records.enroll_device(
                session, request=EnrollRequest(token=secret, name="dev-1", target="cpu"), fleet="default"
            )
        device = MqttDevice(broker.port, "dev-1")
        assert device.wait_connected()
        for seq in range(1, 201):
            device.publish(telemetry("dev-1", seq))
        wait_for(lambda: _count(replicas[0]) == 200)
        received = [r.ingest.stats.received for r in replicas]
        assert sum(received) == 200 and all(count > 0 for count in received), received
        device.close()
    finally:
        for replica in replicas:
            replica.stop()


def test_generated_password_file_and_acl_confine_each_device(tmp_path, signing):
    """Mosquitto loads the registry's files: a device reaches only its own topics, and wrong passwords fail."""
    from fastapi.testclient import TestClient

    from cloud_registry.main import create_app

    broker, settings = secured_broker(
        tmp_path, signing[1], mqtt_client_id=f"registry-{time.monotonic_ns()}", ingest_flush_s=0.05
    )
    app = create_app(settings)
    with TestClient(app) as client:
        api = Api(client, app.state.registry, tmp_path / "registry")
        broker.start()  # from the config the registry wrote on start; it writes the pid file the SIGHUPs use
        a, b = api.enroll("dev-a"), api.enroll("dev-b")  # each enrollment rewrites the files and SIGHUPs
        assert api.registry.link.subscribed.wait(30)
        time.sleep(0.5)  # the reload is asynchronous
        dev_a = MqttDevice(broker.port, "dev-a", username="dev-a", password=a["mqtt"]["password"])
        dev_b = MqttDevice(broker.port, "dev-b", username="dev-b", password=b["mqtt"]["password"])
        assert dev_a.wait_connected() and dev_b.wait_connected()
        wrong = MqttDevice(broker.port, "dev-a", username="dev-a", password=b["mqtt"]["password"])
        assert not wrong.wait_connected(3) and "authoriz" in (wrong.connect_reason or "").lower()
        wrong.close()

        # dev-a tries to read dev-b's commands and the fleet's data; then to write as dev-b.
        dev_a.subscribe(dev_b.topics.command_subscription)
        dev_a.subscribe("edgectl/data/#")
        dev_a.subscribe(dev_a.topics.command_subscription)
        dev_b.subscribe(dev_b.topics.command_subscription)
        forged = dev_a.publish(telemetry("dev-b", 1), topic=dev_b.topics.telemetry)
        forged_cmd = dev_a.client.publish(dev_b.topics.desired, b"{}", qos=1, retain=True)
        forged_cmd.wait_for_publish(5)
        dev_b.publish(telemetry("dev-b", 2))
        dev_a.publish(telemetry("dev-a", 1))
        api.registry.publish(
            [Publication("default", "dev-b", b'{"for":"b"}'), Publication("default", "dev-a", b'{"for":"a"}')]
        )
        wait_for(lambda: _count(api) == 2)
        wait_for(lambda: dev_b.messages("/desired") and dev_a.messages("/desired"))
        time.sleep(0.5)
        with api.registry.factory() as session:
            stored = sorted(
                session.execute(select(m.Device.name, m.TelemetryRecord.seq).join(m.Device)).all()
            )
        assert stored == [("dev-a", 1), ("dev-b", 2)]  # the forged dev-b telemetry never reached the registry
        assert dev_a.messages("/desired") == [{"for": "a"}] and dev_b.messages("/desired") == [{"for": "b"}]
        assert not dev_a.messages("edgectl/data/")  # dev-a read nothing of the fleet's data
        assert forged.rc == 0  # MQTT accepts the packet; the broker's ACL silently drops it
        for device in (dev_a, dev_b):
            device.close()
    broker.stop()
