"""The gateway benchmark's cameras and listener: MQTT 5 over a raw socket, at almost no CPU cost.

On the benchmark machine the cameras and the result listener share the gateway's cores, where
on a hub they would be devices elsewhere on the network. A general-purpose client (paho) spends
tens of microseconds of Python on every message — as much as the gateway itself spends beyond
its model — so the load it generates would crowd the very thing being measured. Here every
PUBLISH packet is encoded before the clock starts and written in large chunks, and the listener
keeps the raw result stream (acknowledging each QoS 1 result) and decodes it after the flood.
Only the subset of MQTT 5 that a camera and a listener need is spoken: CONNECT, PUBLISH at
QoS 1 with user properties, PUBACK, SUBSCRIBE. paho encodes the user properties.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
RECEIVE_MAXIMUM = 0x21  # CONNACK property: QoS 1 publishes the client may have unacknowledged


class LoadError(RuntimeError):
    """The broker refused or broke the load generator's session."""


def varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """(value, offset after it), or None when `data` ends inside it."""
    value, shift = 0, 0
    for i in range(at, min(at + 4, len(data))):
        value |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return value, i + 1
        shift += 7
    return None


def utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(client_id: str, receive_maximum: int | None = None) -> bytes:
    """MQTT 5 CONNECT: clean start, 60 s keep-alive, and the client's Receive Maximum if given."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packet(CONNECT, 0, utf8("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 60) + packed + utf8(client_id))


def publish_packet(topic: str, payload: bytes, packet_id: int, user_properties: list[tuple[str, str]]) -> bytes:
    """MQTT 5 PUBLISH at QoS 1."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
    if user_properties:
        props.UserProperty = user_properties
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packet(PUBLISH, 0x02, utf8(topic) + struct.pack("!H", packet_id) + packed + payload)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return packet(SUBSCRIBE, 0x02, struct.pack("!H", packet_id) + b"\x00" + utf8(topic_filter) + bytes([qos]))


def take_packets(data: bytearray, limit: int | None = None) -> list[tuple[int, bytes]]:
    """Complete packets at the front of `data` (at most `limit`) as (first byte, body), removed from it."""
    packets: list[tuple[int, bytes]] = []
    at = 0
    while at + 1 < len(data) and (limit is None or len(packets) < limit):
        header = read_varint(data, at + 1)
        if header is None or header[1] + header[0] > len(data):
            break
        length, body_at = header
        packets.append((data[at], bytes(data[body_at : body_at + length])))
        at = body_at + length
    del data[:at]
    return packets


def connack_receive_maximum(body: bytes) -> int:
    """The broker's Receive Maximum from a CONNACK body (65,535 when absent); raises if refused."""
    if len(body) < 2 or body[1] != 0:
        raise LoadError(f"the broker refused the connection (reason {body[1] if len(body) > 1 else '?'})")
    props = read_varint(body, 2)
    if props is None:
        raise LoadError("malformed CONNACK")
    length, at = props
    end = at + length
    while at < end:
        ident = body[at]
        if ident == RECEIVE_MAXIMUM:
            return int(struct.unpack_from("!H", body, at + 1)[0])
        # The other CONNACK properties: skip them by type (byte, two- and four-byte integers,
        # strings and binary data with a two-byte length, a string pair, a varint).
        if ident in (0x24, 0x25, 0x28, 0x29, 0x2A):
            at += 2
        elif ident in (0x13, 0x22):
            at += 3
        elif ident in (0x11, 0x27):
            at += 5
        elif ident in (0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F):
            at += 3 + struct.unpack_from("!H", body, at + 1)[0]
        elif ident == 0x26:
            key_len = struct.unpack_from("!H", body, at + 1)[0]
            at += 3 + key_len + 2 + struct.unpack_from("!H", body, at + 3 + key_len)[0]
        elif ident == 0x0B:
            skip = read_varint(body, at + 1)
            at = skip[1] if skip else end
        else:
            raise LoadError(f"unexpected CONNACK property {ident:#x}")
    return 65535


@dataclass
class Session:
    """One MQTT 5 connection: blocking socket, bytes read but not yet parsed."""

    sock: socket.socket
    pending: bytearray = field(default_factory=bytearray)

    @classmethod
    def open(cls, host: str, port: int, client_id: str, receive_maximum: int | None = None) -> tuple[Session, int]:
        """Connect and return the session and the broker's Receive Maximum."""
        session = cls(socket.create_connection((host, port), timeout=30))
        session.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session.sock.sendall(connect_packet(client_id, receive_maximum))
        first, body = session.next_packet()
        if first >> 4 != CONNACK:
            raise LoadError(f"expected CONNACK, got packet type {first >> 4}")
        return session, connack_receive_maximum(body)

    def next_packet(self) -> tuple[int, bytes]:
        while not (packets := take_packets(self.pending, limit=1)):
            self.receive()
        return packets[0]

    def receive(self, flags: int = 0) -> int:
        """Read what has arrived into `pending`; the number of bytes (0 when none, with MSG_DONTWAIT)."""
        try:
            chunk = self.sock.recv(1 << 18, flags)
        except BlockingIOError:
            return 0
        if not chunk:
            raise LoadError("the broker closed the connection")
        self.pending += chunk
        return len(chunk)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a broker already gone needs no goodbye
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
        self.sock.close()


@dataclass
class Message:
    """A frame to publish, encoded in advance."""

    key: str
    data: bytes


class Camera:
    """Publishes pre-encoded QoS 1 frames as fast as the broker takes them, within its Receive Maximum."""

    def __init__(self, host: str, port: int, client_id: str = "bench-camera") -> None:
        self.session, self.window = Session.open(host, port, client_id)
        self.next_id = 1

    def encode(self, key: str, topic: str, payload: bytes, user_properties: list[tuple[str, str]]) -> Message:
        packet_id = self.next_id
        self.next_id = self.next_id % 65535 + 1  # ids 1…65535; the window keeps reused ids acknowledged
        return Message(key, publish_packet(topic, payload, packet_id, user_properties))

    def flood(self, messages: list[Message], chunk: int = 64) -> dict[str, float]:
        """Send every message; returns each one's send time (time.perf_counter()) once all are acknowledged."""
        sent_at: dict[str, float] = {}
        window = min(self.window, 65535)
        sent = acked = 0
        while acked < len(messages):
            count = min(chunk, len(messages) - sent, window - (sent - acked))
            if count > 0:
                batch = messages[sent : sent + count]
                now = time.perf_counter()
                self.session.sock.sendall(b"".join(m.data for m in batch))
                sent_at.update((m.key, now) for m in batch)
                sent += count
            # Collect PUBACKs without waiting while there is still room to send.
            if self.session.receive(socket.MSG_DONTWAIT if count > 0 else 0):
                for first, body in take_packets(self.session.pending):
                    if first >> 4 != PUBACK:
                        continue
                    if len(body) > 2 and body[2] >= 0x80:
                        raise LoadError(f"the broker refused a frame (PUBACK reason {body[2]:#x})")
                    acked += 1
        return sent_at

    def close(self) -> None:
        self.session.close()


class Listener:
    """Subscribes to result topics at QoS 1 and records each result's arrival time and payload.

    Like a real consumer it bounds what the broker may send it unacknowledged (`receive_maximum`),
    so it keeps up only by acknowledging every result.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        expected: int,
        client_id: str = "bench-listener",
        on_thread_start: Callable[[], None] | None = None,
        receive_maximum: int = 1000,
    ) -> None:
        self.session, _ = Session.open(host, port, client_id, receive_maximum)
        self.session.sock.sendall(subscribe_packet(1, topic_filter, 1))
        first, _ = self.session.next_packet()
        if first >> 4 != SUBACK:
            raise LoadError(f"expected SUBACK, got packet type {first >> 4}")
        self.expected = expected
        self.arrivals: list[tuple[float, int, bytes]] = []  # (time.perf_counter(), first byte, PUBLISH body)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.on_thread_start = on_thread_start
        self.thread = threading.Thread(target=self._run, name="bench-listener", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self.on_thread_start is not None:
            self.on_thread_start()
        try:
            while len(self.arrivals) < self.expected:
                self.session.receive()
                now = time.perf_counter()
                acks = []
                for first, raw in take_packets(self.session.pending):
                    if first >> 4 != PUBLISH:
                        continue
                    self.arrivals.append((now, first, raw))
                    if (first >> 1) & 3:  # QoS 1: acknowledge by packet id, which follows the topic
                        topic_len = struct.unpack_from("!H", raw)[0]
                        acks.append(b"\x40\x02" + raw[2 + topic_len : 4 + topic_len])
                if acks:
                    self.session.sock.sendall(b"".join(acks))
        except (OSError, LoadError) as exc:
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout) and self.error is None

    def results(self) -> list[tuple[float, str, dict[str, Any]]]:
        """(arrival time, topic, decoded JSON payload) of every result received so far."""
        out = []
        for arrived, first, raw in self.arrivals:
            topic_len = struct.unpack_from("!H", raw)[0]
            topic = raw[2 : 2 + topic_len].decode()
            packet_id = 2 if (first >> 1) & 3 else 0  # QoS 1 and 2 carry a packet id before the properties
            props = read_varint(raw, 2 + topic_len + packet_id)
            if props is None:
                raise LoadError(f"malformed PUBLISH on {topic}")
            length, at = props
            out.append((arrived, topic, json.loads(raw[at + length :])))
        return out

    def close(self) -> None:
        self.session.close()
        self.thread.join(5)
