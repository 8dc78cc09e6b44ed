"""The broker link: a paho-mqtt 2.x client configured for at-least-once delivery of frames.

- persistent session (MQTT 5: clean_start off and a non-zero Session Expiry Interval; 3.1.1:
  clean_session off) so frames published while the gateway is down wait at the broker;
- frames are acknowledged by hand (`manual_ack=True`) once their result is out, never on receipt;
- the retained status topic says `online` after every (re)connect and `offline` on a clean stop,
  and the Will says `offline` when the connection dies;
- paho's network thread reconnects with exponential backoff, including when the broker is down
  at start-up; we re-subscribe on every connect in case the broker lost the session.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
import paho.mqtt.properties as paho_properties
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.frames import Delivery
from gateway.settings import MqttSettings

log = structlog.get_logger("gateway.mqtt")

PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
OUTGOING_INFLIGHT = 200  # results in flight to the broker before paho queues them locally

DeliveryHandler = Callable[[Delivery], None]
Delivered = Callable[[], None]


# Surrogates and NUL ([MQTT-1.5.4-1], [MQTT-1.5.4-2]); searched in C, as this runs for every
# property string of every frame.
FORBIDDEN_IN_UTF8_STRINGS = re.compile("[\ud800-\udfff\0]")


def read_utf_accepting_bom(buffer: bytes, maxlen: int) -> tuple[str, int]:
    """paho's property string reader, except that U+FEFF is accepted.

    paho rejects a property string holding U+FEFF as a malformed packet and drops the connection,
    but MQTT 5 (1.5.4, [MQTT-1.5.4-3]) makes U+FEFF legal and the broker forwards it. A camera
    that put one in a user property would otherwise disconnect the gateway on every redelivery of
    its unacknowledged frame, forever (found by tests/faults/test_fuzz.py). The other checks —
    surrogates, NUL — stay, and the broker enforces them before us anyway.
    """
    if maxlen < 2:
        raise MalformedPacket("Not enough data to read string length")
    length = int.from_bytes(buffer[:2], "big")
    if length > maxlen - 2:
        raise MalformedPacket("Length delimited string too long")
    text = bytes(buffer[2:2 + length]).decode("utf-8")
    if FORBIDDEN_IN_UTF8_STRINGS.search(text):
        raise MalformedPacket("[MQTT-1.5.4] surrogate or NUL in UTF-8 data")
    return text, length + 2


paho_properties.readUTF = read_utf_accepting_bom


class PublishTracker:
    """Runs a callback when the broker has acknowledged one of our publishes (PUBACK).

    paho may report the PUBACK before `publish()` has returned its mid to us, so a mid reported
    early is remembered until its callback is registered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, Delivered] = {}
        self._early: set[int] = set()

    def register(self, mid: int, callback: Delivered) -> None:
        with self._lock:
            if mid not in self._early:
                self._waiting[mid] = callback
                return
            self._early.discard(mid)
        callback()

    def delivered(self, mid: int) -> None:
        with self._lock:
            callback = self._waiting.pop(mid, None)
            if callback is None:
                self._early.add(mid)
                return
        callback()


def device_of(topic: str, device_level: int) -> str:
    levels = topic.split("/")
    return levels[device_level] if device_level < len(levels) else ""


def user_properties(message: paho.MQTTMessage) -> dict[str, str]:
    props = getattr(message, "properties", None)
    pairs = getattr(props, "UserProperty", None) or []
    return {str(k): str(v) for k, v in pairs}


class BrokerLink:
    """The gateway's one MQTT connection."""

    def __init__(self, settings: MqttSettings, frame_topic: str, status_topic: str,
                 on_delivery: DeliveryHandler) -> None:
        self.settings = settings
        self.frame_topic = frame_topic
        self.status_topic = status_topic
        self.on_delivery = on_delivery
        self.device_level = settings.input_topic.split("/").index("+")
        self.connected = threading.Event()
        self.tracker = PublishTracker()
        # Called on paho's network thread: the broker granted the frame subscription (every
        # (re)connect), or the connection was lost.
        self.on_subscribed: Callable[[], None] = lambda: None
        self.on_connection_lost: Callable[[], None] = lambda: None
        self._taking_frames = True
        self._stopping = False
        self.client = self.build_client()

    # --- setup -------------------------------------------------------------------------

    def build_client(self) -> paho.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=PROTOCOLS[s.protocol],
            clean_session=None if v5 else False, manual_ack=True,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        tls = s.tls_context()  # the files were checked when the settings were read
        if tls is not None:
            client.tls_set_context(tls)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        client.max_inflight_messages_set(OUTGOING_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def connect_properties(self, receive_maximum: int) -> Properties | None:
        if self.settings.protocol != "5":
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        props.SessionExpiryInterval = self.settings.session_expiry_s
        # The broker sends at most this many unacknowledged frames: our bounded queue's size.
        props.ReceiveMaximum = receive_maximum
        return props

    def start(self, receive_maximum: int) -> None:
        """Connect in the background; paho retries until the broker answers."""
        s = self.settings
        log.info("broker connecting", host=s.host, port=s.port, protocol=s.protocol, client_id=s.client_id)
        # Under 3.1.1 the session is kept by clean_session=False on the client instead.
        clean_start = False if s.protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s,
                                  clean_start=clean_start, properties=self.connect_properties(receive_maximum))
        self.client.loop_start()

    # --- outgoing ----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, on_delivered: Delivered, *, retain: bool = False) -> None:
        """Publish and call `on_delivered` once the broker has it (at once for QoS 0).

        Publishing while disconnected is fine: paho keeps QoS 1 messages and sends them on reconnect.
        """
        info = self.client.publish(topic, payload, qos=self.settings.qos, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise RuntimeError(f"paho refused to queue a message for {topic}")
        self.tracker.register(info.mid, on_delivered)

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    def stop_taking_frames(self) -> None:
        """Frames arriving from now on are neither processed nor acknowledged: the broker keeps them."""
        self._taking_frames = False

    def close(self, timeout: float) -> bool:
        """Publish `offline`, disconnect cleanly (so the Will is not sent), stop the network thread."""
        self._stopping = True
        sent = threading.Event()
        deadline = time.monotonic() + timeout
        if self.connected.is_set():
            self.publish(self.status_topic, "offline", sent.set, retain=True)
            sent.wait(max(0.0, deadline - time.monotonic()))
        self.client.disconnect()
        self.client.loop_stop()
        return sent.is_set()

    # --- callbacks, on paho's network thread ---------------------------------------------

    def _on_connect(self, client: paho.Client, _userdata: object, flags: paho.ConnectFlags,
                    reason: ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            log.warning("broker refused connection", reason=str(reason))
            return
        options = SubscribeOptions(qos=self.settings.qos)
        if self.settings.protocol == "5":
            client.subscribe(self.frame_topic, options=options)
        else:
            client.subscribe(self.frame_topic, qos=self.settings.qos)
        # Sent after SUBSCRIBE on the same connection, so the broker routes frames to us by the
        # time anyone sees `online`.
        self.publish(self.status_topic, "online", lambda: None, retain=True)
        self.connected.set()
        log.info("broker connected", session_present=flags.session_present)

    def _on_subscribe(self, _client: paho.Client, _userdata: object, _mid: int,
                      reasons: list[ReasonCode], _props: Properties | None) -> None:
        if any(reason.is_failure for reason in reasons):
            # E.g. the broker's ACL forbids the topic: nothing will arrive, so we are not ready.
            log.error("broker refused the frame subscription", topic=self.frame_topic,
                      reasons=[str(r) for r in reasons])
            return
        log.info("broker subscribed", topic=self.frame_topic)
        self.on_subscribed()

    def _on_connect_fail(self, _client: paho.Client, _userdata: object) -> None:
        log.warning("broker unreachable, retrying", host=self.settings.host, port=self.settings.port)

    def _on_disconnect(self, _client: paho.Client, _userdata: object, _flags: paho.DisconnectFlags,
                       reason: ReasonCode, _props: Properties | None) -> None:
        self.connected.clear()
        if not self._stopping:
            log.warning("broker connection lost, reconnecting", reason=str(reason))
            self.on_connection_lost()

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        if not self._taking_frames:
            return
        now, wall = time.monotonic(), time.time()
        self.on_delivery(Delivery(
            topic=message.topic, device_id=device_of(message.topic, self.device_level),
            payload=bytes(message.payload), mid=message.mid, qos=message.qos,
            received_at=now, received_wall=wall, properties=user_properties(message),
        ))

    def _on_publish(self, _client: paho.Client, _userdata: object, mid: int,
                    reason: ReasonCode, _props: Properties) -> None:
        if reason.is_failure:
            # The broker refused our result (e.g. not authorised, quota exceeded): the frame stays
            # unacknowledged, so the broker redelivers it at our next session.
            log.error("broker refused a result", mid=mid, reason=str(reason))
            return
        self.tracker.delivered(mid)
