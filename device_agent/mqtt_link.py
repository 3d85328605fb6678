"""The device's MQTT connection (paho-mqtt 2): presence, the desired-model command, and draining the outbox.

- Every connection attempt takes a new session number from the outbox's
  persisted counter and sets the Last Will to a retained `offline` presence
  of that session; once connected it publishes a retained `online` of the
  same session, so a late Will of an older connection never looks newer.
- The device subscribes to its own command subtree only and hands each
  `desired` message to the updater (a malformed one is logged and dropped).
- A publisher thread hands queued messages to paho in order while connected,
  at most `max_inflight` unacknowledged at a time, QoS 1, and deletes each
  from the outbox only when its PUBACK arrives. Within one process paho
  resends unacknowledged messages after a reconnect; across restarts the
  outbox does. Update statuses are published retained, so the broker keeps
  each device's newest one for a registry that subscribes late.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from device_agent.outbox import Message, Outbox
from edgewire import DesiredModel, Presence, Topics, parse_payload
from edgewire.messages import PayloadError, dump_payload
from edgewire.topics import parse_topic

log = logging.getLogger(__name__)
RETRY_REFUSED_S = 5.0  # a message the broker refused (MQTT 5 reason code) is offered again after this


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive_s: int = 30
    protocol: str = "3.1.1"
    max_inflight: int = 20


class MqttLink:
    def __init__(
        self,
        settings: BrokerSettings,
        topics: Topics,
        outbox: Outbox,
        presence: Callable[[str, int], Presence],
        on_desired: Callable[[DesiredModel], None],
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.outbox = outbox
        self._presence = presence
        self._on_desired = on_desired
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._disconnected_at: float | None = time.monotonic()
        self._session = 0
        self._handed: dict[int, Message] = {}  # paho mid -> queued message; owned by the publisher thread
        self._client = self._make_client()
        self._publisher = threading.Thread(target=self._publish_loop, name="mqtt-publisher", daemon=True)

    # ------------------------------------------------------------------ paho client

    def _make_client(self):
        import paho.mqtt.client as mqtt

        v5 = self.settings.protocol == "5"
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edgectl-{self.topics.fleet}-{self.topics.device}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.max_inflight_messages_set(self.settings.max_inflight)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if self.settings.username:
            password = self.settings.password.get_secret_value() if self.settings.password else None
            client.username_pw_set(self.settings.username, password)
        if self.settings.tls:
            client.tls_set(ca_certs=str(self.settings.ca_file) if self.settings.ca_file else None)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _on_pre_connect(self, client, userdata) -> None:
        self._session = self.outbox.next_counter("session")
        will = dump_payload(self._presence("offline", self._session))
        client.will_set(self.topics.presence, will, qos=1, retain=True)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("the MQTT broker refused the connection: %s", reason_code)
            return
        log.info(
            "connected to the MQTT broker %s:%s (session %d)",
            self.settings.host,
            self.settings.port,
            self._session,
        )
        client.subscribe(self.topics.command_subscription, qos=1)
        client.publish(
            self.topics.presence, dump_payload(self._presence("online", self._session)), qos=1, retain=True
        )
        self._disconnected_at = None
        self._connected.set()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        log.debug("cannot reach the MQTT broker %s:%s; retrying", self.settings.host, self.settings.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            log.warning("lost the MQTT broker (%s); messages wait on disk", reason_code)
        self._connected.clear()
        self._disconnected_at = time.monotonic()

    def _on_message(self, client, userdata, message) -> None:
        parsed = parse_topic(message.topic)
        if parsed is None or parsed.direction != "cmd" or parsed.kind != "desired":
            return
        if not message.payload:  # the registry cleared the retained message
            return
        try:
            desired = parse_payload("desired", message.payload)
        except PayloadError as exc:
            log.warning("dropped a desired-model message: %s", exc)
            return
        self._on_desired(desired)  # type: ignore[arg-type]

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Called by paho with its own lock held: hand the ack over, never touch the outbox here.
        self._acks.put((mid, not reason_code.is_failure))
        self._wake.set()

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def down_for(self) -> float:
        """Seconds since the connection was lost (0 while connected)."""
        since = self._disconnected_at
        return 0.0 if since is None else time.monotonic() - since

    def refresh_presence(self) -> None:
        """Publish the retained online presence again (the model changed), in the current session."""
        if self.connected:
            self._client.publish(
                self.topics.presence,
                dump_payload(self._presence("online", self._session)),
                qos=1,
                retain=True,
            )

    def wake(self) -> None:
        """Something was queued: publish it now rather than at the next tick."""
        self._wake.set()

    # ------------------------------------------------------------------ publishing

    def _publish_loop(self) -> None:
        last_id = 0  # highest outbox row handed to paho in this process
        refused: list[tuple[float, Message]] = []
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            done: list[int] = []
            while True:
                try:
                    mid, accepted = self._acks.get_nowait()
                except queue.Empty:
                    break
                message = self._handed.pop(mid, None)
                if message is None:
                    continue
                if accepted:
                    done.append(message.id)
                else:
                    log.warning(
                        "the broker refused queued message seq %d; offering it again later", message.seq
                    )
                    refused.append((time.monotonic(), message))
            self.outbox.delete(done)
            now = time.monotonic()
            while refused and now - refused[0][0] >= RETRY_REFUSED_S and self._hand(refused[0][1]):
                refused.pop(0)
            room = self.settings.max_inflight - len(self._handed)
            # While the broker is down, messages wait on disk (bounded), not in paho's memory.
            if room > 0 and self.connected:
                claimed = self.outbox.claim(after_id=last_id, limit=room)
                for n, message in enumerate(claimed):
                    if not self._hand(message):
                        for left in claimed[n:]:
                            self.outbox.release(left.id)
                        break
                    last_id = message.id

    def _hand(self, message: Message) -> bool:
        import paho.mqtt.client as mqtt

        # The newest update status is retained: a registry that subscribes late (its first start, or back
        # after its session expired) still learns how each device's last update ended.
        retain = message.kind == "update"
        info = self._client.publish(self.topics.data(message.kind), message.payload, qos=1, retain=retain)  # type: ignore[arg-type]
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("paho did not take queued message %d: %s", message.id, mqtt.error_string(info.rc))
            return False
        self._handed[info.mid] = message
        return True

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._client.connect_async(
            self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s
        )
        self._client.loop_start()
        self._publisher.start()

    def stop(self, flush_s: float = 2.0) -> None:
        """Give queued messages `flush_s` to go out, publish a retained offline presence, disconnect."""
        deadline = time.monotonic() + flush_s
        while (
            self.connected and time.monotonic() < deadline and (self._handed or self.outbox.stats().pending)
        ):
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._publisher.is_alive():
            self._publisher.join(timeout=5)
        if self.connected:
            info = self._client.publish(
                self.topics.presence,
                dump_payload(self._presence("offline", self._session)),
                qos=1,
                retain=True,
            )
            info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
