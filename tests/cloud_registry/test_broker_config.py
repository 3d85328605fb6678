"""The broker config the registry writes, loaded by the real Mosquitto: messages it acknowledged survive its
restart while the registry is away (persistence), and no device's credentials take over the registry's
client id or another device's (a device listener that binds the client id to the username)."""

from __future__ import annotations

import os
import re
import stat
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from cloud_registry import mosquitto
from cloud_registry.core.security import mosquitto_hash
from edgewire.topics import Topics
from tests.cloud_registry.conftest import make_settings
from tests.device_agent.harness import wait_for
from tests.services import ConfiguredMosquitto, free_port

REGISTRY_PASSWORD = "registry-secret-0123456789"
PASSWORDS = {"dev-a": "password-of-dev-a", "dev-b": "password-of-dev-b"}


def _settings(tmp_path, public_key, **extra):
    values = {
        "mqtt_host": "127.0.0.1",
        "mqtt_port": free_port(),
        "mqtt_username": "registry",
        "mqtt_password": REGISTRY_PASSWORD,
        "device_mqtt_port": free_port(),
        "mosquitto_device_bind": "127.0.0.1",
        "mosquitto_dir": tmp_path / "mq",
    }
    return make_settings(tmp_path / "registry", public_key, **{**values, **extra})


def _write(settings, devices: dict[str, str] = PASSWORDS) -> mosquitto.BrokerLayout:
    broker = mosquitto.layout(settings)
    users = [mosquitto.BrokerUser(name, mosquitto_hash(password)) for name, password in devices.items()]
    registry = mosquitto.BrokerUser("registry", mosquitto_hash(REGISTRY_PASSWORD))
    mosquitto.write_broker(broker, mosquitto.broker_files(broker, settings.fleet, users, registry))
    return broker


@pytest.fixture
def fleet_broker(tmp_path, signing):
    """(settings, the broker started from the files the registry wrote)."""
    settings = _settings(tmp_path, signing[1])
    layout = _write(settings)
    server = ConfiguredMosquitto(
        tmp_path / "broker", port=layout.devices.port, config_file=layout.directory / mosquitto.CONFIG
    )
    server.start()
    yield settings, server
    server.stop()


class Client:
    """A paho MQTT 5 client that counts how often the broker closed its connection (paho reconnects)."""

    def __init__(self, port: int, client_id: str, username: str, password: str) -> None:
        self.connected, self.subscribed = threading.Event(), threading.Event()
        self.reason: str | None = None
        self.disconnects = 0
        self.received: list[bytes] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.received.append(message.payload)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.reason = str(reason_code)
        if reason_code.is_failure:
            client.disconnect()  # refused: do not retry
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.disconnects += 1

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _registry_link(settings, received: list[bytes]):
    """The registry's own MQTT client (persistent session, manual acks), collecting payloads."""
    from cloud_registry.mqtt_link import MqttLink

    link: MqttLink | None = None

    def on_message(message) -> None:  # type: ignore[no-untyped-def]
        received.append(message.payload)
        assert link is not None
        link.ack(message.mid, message.qos)

    link = MqttLink(settings, on_message)
    link.start()
    assert link.subscribed.wait(20), "the registry's MQTT subscription"
    return link


def test_messages_the_broker_acknowledged_survive_its_restart_while_the_registry_is_away(fleet_broker):
    settings, broker = fleet_broker
    received: list[bytes] = []
    _registry_link(settings, received).stop()  # its session stays on the broker (one hour's expiry)

    device = Client(broker.port, "edgectl-default-dev-a", "dev-a", PASSWORDS["dev-a"])
    assert device.connected.wait(10) and device.reason == "Success", device.reason
    topic = Topics("default", "dev-a").telemetry
    sent = [f"message {i}".encode() for i in range(24)]
    for payload in sent:
        device.publish(topic, payload)  # PUBACK: the broker has it
    device.close()

    broker.restart()  # the registry is still away
    link = _registry_link(settings, received)
    try:
        wait_for(lambda: len(received) >= len(sent), "every acknowledged message", 20, broker.log)
        assert sorted(received) == sorted(sent)
    finally:
        link.stop()


def test_acknowledged_in_one_write_are_gone_and_the_rest_redelivered(fleet_broker):
    """`ack_many` writes a batch's PUBACKs as one packet write (paho's private `_packet_queue`): against the
    real broker, exactly the messages it names are done with; the others come back to the session."""
    from cloud_registry.mqtt_link import MqttLink

    settings, broker = fleet_broker
    delivered: list[tuple[int, int, bytes]] = []
    link = MqttLink(settings, lambda message: delivered.append((message.mid, message.qos, message.payload)))
    link.start()
    assert link.subscribed.wait(20), "the registry's MQTT subscription"
    device = Client(broker.port, "edgectl-default-dev-a", "dev-a", PASSWORDS["dev-a"])
    assert device.connected.wait(10) and device.reason == "Success", device.reason
    sent = [f"message {i}".encode() for i in range(10)]
    for payload in sent:
        device.publish(Topics("default", "dev-a").telemetry, payload)
    device.close()
    wait_for(lambda: len(delivered) == len(sent), "every message", 20, broker.log)
    link.ack_many([(mid, qos) for mid, qos, _ in delivered[:6]])
    link.stop()  # its DISCONNECT goes after the PUBACKs; the session stays on the broker

    again: list[bytes] = []
    link = _registry_link(settings, again)
    try:
        wait_for(lambda: len(again) >= 4, "the four not acknowledged", 20, broker.log)
        time.sleep(0.5)  # nothing more comes
        assert sorted(again) == sorted(sent[6:])
    finally:
        link.stop()


def test_the_registry_link_takes_no_per_topic_callbacks(fleet_broker):
    from cloud_registry.mqtt_link import MqttLink

    link = MqttLink(fleet_broker[0], lambda message: None)
    with pytest.raises(NotImplementedError):
        link.client.message_callback_add("edgectl/data/#", lambda *args: None)


def test_no_device_takes_over_the_registrys_client_id_or_another_devices(fleet_broker):
    settings, broker = fleet_broker
    registry_port = settings.mqtt_port
    registry = Client(registry_port, settings.mqtt_client_id, "registry", REGISTRY_PASSWORD)
    assert registry.connected.wait(10) and registry.reason == "Success", registry.reason
    registry.client.subscribe("edgectl/data/#", qos=1)
    assert registry.subscribed.wait(10)
    dev_b = Client(broker.port, "edgectl-default-dev-b", "dev-b", PASSWORDS["dev-b"])
    assert dev_b.connected.wait(10) and dev_b.reason == "Success", dev_b.reason
    dev_b.client.subscribe(Topics("default", "dev-b").command_subscription, qos=1)
    assert dev_b.subscribed.wait(10)

    # Device A's credentials with the registry's client id and with device B's (its id and its agent's).
    attackers = []
    for client_id in (settings.mqtt_client_id, "dev-b", "edgectl-default-dev-b"):
        attacker = Client(broker.port, client_id, "dev-a", PASSWORDS["dev-a"])
        assert attacker.connected.wait(10) and attacker.reason == "Success", attacker.reason
        attackers.append(attacker)
    # ... and on the registry's listener, which takes the registry's user only.
    refused = Client(registry_port, settings.mqtt_client_id, "dev-a", PASSWORDS["dev-a"])
    assert refused.connected.wait(10) and refused.reason == "Not authorized", refused.reason

    # A round trip on each old connection: had the broker closed it, paho would have seen that first.
    def report() -> str:
        return f"disconnects: registry {registry.disconnects}, B {dev_b.disconnects}\n{broker.log()[-3000:]}"

    dev_b.publish(Topics("default", "dev-b").telemetry, b"still here")
    wait_for(lambda: b"still here" in registry.received, "B's message at the registry", 10, report)
    registry.publish(Topics("default", "dev-b").desired, b"desired for b", retain=True)
    wait_for(lambda: b"desired for b" in dev_b.received, "the registry's message at B", 10, report)
    assert (registry.disconnects, dev_b.disconnects) == (0, 0), broker.log()[-3000:]
    for client in (*attackers, refused, dev_b, registry):
        client.close()


def test_the_config_files_are_private_and_complete(tmp_path, signing):
    settings = _settings(tmp_path, signing[1])
    layout = _write(settings, {**PASSWORDS, settings.mqtt_client_id: "a device named like the registry"})
    directory = layout.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    config = (directory / mosquitto.CONFIG).read_text()
    import pwd

    assert f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" in config
    for line in (
        f"pid_file {directory}/mosquitto.pid",
        "persistence true",
        f"persistence_location {directory}/",
        "autosave_interval 10",
        f"listener {settings.device_mqtt_port} 127.0.0.1\nuse_username_as_clientid true\nallow_anonymous false",
        f"listener {settings.mqtt_port} 127.0.0.1\nallow_anonymous false\npassword_file {directory}/registry.passwd",
    ):
        assert line in config
    devices = (directory / mosquitto.DEVICE_PASSWD).read_text()
    assert [line.split(":")[0] for line in devices.splitlines()] == [
        "dev-a",
        "dev-b",
    ]  # not the registry's ids
    assert (directory / mosquitto.REGISTRY_PASSWD).read_text().startswith("registry:$7$")
    assert "user registry" not in (directory / mosquitto.DEVICE_ACL).read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"device_mqtt_port": None}, "device_mqtt_port (devices) must differ from mqtt_port"),
        ({"mqtt_username": None}, "needs mqtt_username and mqtt_password"),
        ({"mosquitto_device_bind": "0.0.0.0 9"}, "unusable broker address"),
        ({"mosquitto_pid_file": "/tmp/x.pid\nallow_anonymous true"}, "unusable broker path"),
    ],
)
def test_settings_that_cannot_make_a_broker_config_are_refused(tmp_path, signing, extra, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _settings(tmp_path, signing[1], **extra)
