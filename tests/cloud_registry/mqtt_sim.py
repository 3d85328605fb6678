"""Simulated devices speaking real MQTT 5 to a real broker (paho), for ingest, ACL and benchmark runs."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgewire.messages import dump_payload
from edgewire.topics import Topics


class MqttDevice:
    """One device's connection: publishes its data, collects what arrives on what it subscribed to."""

    def __init__(
        self,
        port: int,
        name: str,
        *,
        username: str | None = None,
        password: str | None = None,
        fleet: str = "default",
    ):
        self.topics = Topics(fleet, name)
        self.received: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.connect_reason: str | None = None
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"sim-{name}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connect_reason = str(reason_code)
        if not reason_code.is_failure:
            self.connected.set()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.received.append((message.topic, message.payload, bool(message.retain)))

    def wait_connected(self, timeout: float = 10) -> bool:
        return self.connected.wait(timeout)

    def publish(self, message, topic: str | None = None, retain: bool = False) -> mqtt.MQTTMessageInfo:  # type: ignore[no-untyped-def]
        info = self.client.publish(
            topic or self.topics.data(message.kind), dump_payload(message), qos=1, retain=retain
        )
        info.wait_for_publish(10)
        return info

    def subscribe(self, topic: str) -> list:
        done = threading.Event()
        codes: list = []

        def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
            codes.extend(reason_codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        done.wait(10)
        return codes

    def messages(self, topic_part: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.received if topic_part in t and p]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    return properties


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s")


def enroll_devices(registry, names: list[str], created_by: str = "test") -> list[str]:  # type: ignore[no-untyped-def]
    """Enroll these device names in a registry's database directly (one token each), without HTTP."""
    from cloud_registry import devices as device_records
    from edgewire.device_api import EnrollRequest
    from registry_api.schemas import EnrollmentTokenCreate

    with registry.factory() as session, session.begin():
        for name in names:
            _, secret = device_records.create_enrollment_token(
                session, body=EnrollmentTokenCreate(), created_by=created_by, default_ttl_s=60
            )
            device_records.enroll_device(
                session, request=EnrollRequest(token=secret, name=name, target="cpu"), fleet="default"
            )
    return names
