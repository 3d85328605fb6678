"""The registry's one MQTT connection: it subscribes to the fleet's data and publishes desired states.

- MQTT 5, a persistent session (clean_start off, one hour's expiry) and manual
  acknowledgements: a QoS 1 message is acknowledged only after the batch that
  holds it is committed to the database, so neither a registry crash nor a
  broker restart loses telemetry; the broker redelivers what was not acked.
- With `mqtt_share_group` set, the subscription is `$share/<group>/edgectl/data/#`
  and the broker splits the stream across every replica in the group.
- paho's network thread reconnects by itself (1 s to 30 s back-off); on every
  (re)connect the subscription is renewed and `on_connected` runs (the registry
  republishes every retained desired state then).
- The socket is read 64 KiB at a time (`_ReadAhead`): paho reads each packet with
  three or four small recv calls, which took a third of its time per message.
  What is buffered is handled in one pass of paho's loop (`loop_read`), not one
  select per packet, and a committed batch is acknowledged with one write
  (`ack_many`), not one wake-up and one send per message.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_registry.core.config import Settings
from edgewire.topics import Topics, data_subscription

log = logging.getLogger("cloud_registry.mqtt")
SESSION_EXPIRY_S = 3600


_READ_AHEAD = 65536
_READ_BURST = 1000  # packets handled from the buffer before paho's loop looks at its writes and timers again
_PUBACK = struct.Struct("!BBH")  # an MQTT 5 PUBACK of success without properties: type, length 2, packet id


class _ReadAhead:
    """A plain TCP socket read 64 KiB at a time, handing paho the bytes it asks for from that buffer.

    paho reads a packet's type byte, each byte of its length, then the rest, one recv call each: four
    system calls per telemetry message. Its loop asks a socket for `pending()` bytes (TLS sockets have
    that) and reads on without waiting in select while there are some, so a buffer here is all it takes.
    Measured on a backlog of 30,000 messages: 113 us of CPU a message without it, 77 us with it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._buffer = sock, bytearray()

    def recv(self, size: int) -> bytes:
        buffer = self._buffer
        if not buffer:
            data = self._sock.recv(_READ_AHEAD)  # BlockingIOError and b"" (closed) reach paho as they are
            if len(data) <= size:
                return data
            buffer += data
        taken = bytes(buffer[:size])
        del buffer[:size]  # cheap at the front of a bytearray
        return taken

    def pending(self) -> int:
        return len(self._buffer)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._sock, name)  # send, fileno, setblocking, close: the socket's own


class _Client(mqtt.Client):
    def _create_socket(self):  # type: ignore[no-untyped-def]
        # paho's one place that makes the socket (private; tests/cloud_registry/test_mqtt.py checks the link gets a
        # _ReadAhead, so a paho release that renames it fails a test instead of quietly costing CPU).
        # TLS sockets already read whole records and say what is pending; websockets wrap their own.
        sock = super()._create_socket()
        if self._ssl or self._transport != "tcp":
            return sock
        return _ReadAhead(sock)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        # paho's loop reads one packet per pass, each pass a select call (its timeout 0 while bytes are
        # pending): every packet already in the buffer is handled here first, up to a burst.
        rc = super().loop_read(max_packets)
        sock = self._sock
        for _ in range(_READ_BURST):
            if rc != mqtt.MQTT_ERR_SUCCESS or not isinstance(sock, _ReadAhead) or not sock.pending():
                break
            rc = super().loop_read(1)
        return rc

    def message_callback_add(self, sub, callback) -> None:  # type: ignore[no-untyped-def]
        raise NotImplementedError("the registry's link hands every message to its one on_message")

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # paho first walks its tree of per-topic callbacks (message_callback_add) for every message, a
        # twentieth of the link's CPU; this client has none (refused above), so straight to on_message.
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK these QoS 1 messages in one packet write and one wake-up of the network thread.

        `ack` queues each PUBACK on its own: a write to wake the loop, then a send, per message (a tenth of
        the registry's CPU at 6,000 messages a second). Several MQTT packets in one write are just a byte
        stream to the broker; paho sends a queued entry until all of its bytes are out."""
        if mids:
            packet = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
            self._packet_queue(mqtt.PUBACK, packet, 0, 0)


class MqttLink:
    def __init__(
        self,
        settings: Settings,
        on_message: Callable[[mqtt.MQTTMessage], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_message_cb, self._on_connected_cb = on_message, on_connected
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stopping = False
        self.client = _Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if settings.mqtt_username:
            password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            self.client.username_pw_set(settings.mqtt_username, password)
        if settings.mqtt_tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_queued_messages_set(0)  # keep every desired state until the broker is back
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            self.settings.mqtt_host or "localhost",
            self.settings.mqtt_port,
            keepalive=30,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    def ack_many(self, items: list[tuple[int, int]]) -> None:
        """Acknowledge (mid, qos) pairs: QoS 1 in one write, QoS 2 one by one (nobody publishes data at 2)."""
        self.client.ack_many([mid for mid, qos in items if qos == 1])
        for mid, qos in items:
            if qos == 2:
                self.client.ack(mid, qos)

    def publish_desired(self, fleet: str, device: str, payload: bytes | None) -> None:
        """Retained, QoS 1; an empty payload clears the retained message."""
        self.client.publish(Topics(fleet, device).desired, payload or b"", qos=1, retain=True)

    # paho callbacks (its network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.warning("MQTT connection refused: %s", reason_code)
            return
        log.info("MQTT connected to %s:%s", self.settings.mqtt_host, self.settings.mqtt_port)
        self.connected.set()
        client.subscribe(data_subscription(self.settings.mqtt_share_group), qos=1)
        if self._on_connected_cb is not None:
            threading.Thread(target=self._on_connected_cb, name="mqtt-on-connected", daemon=True).start()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        if any(code.is_failure for code in reason_codes):
            log.error("MQTT subscription refused: %s", [str(c) for c in reason_codes])
            return
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping:
            log.warning("MQTT disconnected (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        self._on_message_cb(message)
