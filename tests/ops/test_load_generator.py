"""The benchmark's raw-socket cameras and listener (bench/mqtt_load.py) against a real mosquitto."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.broker import PrivateBroker

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mqtt_load import (  # bench/ is a folder of scripts, not a package
    Camera,
    Listener,
    LoadError,
    connack_receive_maximum,
    read_varint,
    take_packets,
    varint,
)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_varint_round_trips_at_every_length_boundary(n: int) -> None:
    encoded = varint(n)
    assert len(encoded) == 1 + (n > 127) + (n > 16_383) + (n > 2_097_151)
    assert read_varint(encoded, 0) == (n, len(encoded))


def test_take_packets_leaves_an_incomplete_packet_for_later() -> None:
    stream = bytearray(b"\x40\x02\x00\x01" + b"\x40\x03\x00\x02\x00" + b"\x30\x05ab")
    assert take_packets(stream) == [(0x40, b"\x00\x01"), (0x40, b"\x00\x02\x00")]
    assert stream == bytearray(b"\x30\x05ab")  # 2 of 5 body bytes so far
    stream += b"cde"
    assert take_packets(stream, limit=1) == [(0x30, b"abcde")]
    assert stream == bytearray()


def test_connack_properties_are_skipped_to_the_receive_maximum() -> None:
    props = b"\x27\x00\x01\x00\x00" + b"\x12\x00\x03abc" + b"\x26\x00\x01k\x00\x01v" + b"\x21\x00\x14"
    assert connack_receive_maximum(b"\x00\x00" + varint(len(props)) + props) == 20
    assert connack_receive_maximum(b"\x00\x00\x00") == 65535
    with pytest.raises(LoadError, match=r"refused the connection \(reason 135\)"):
        connack_receive_maximum(b"\x00\x87\x00")


def test_camera_frames_reach_a_paho_subscriber_with_their_user_properties() -> None:
    with PrivateBroker() as broker:
        got: list[paho.MQTTMessage] = []
        all_in = threading.Event()
        sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)

        def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
            got.append(message)
            if len(got) == 300:
                all_in.set()

        sub.on_message = on_message
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        try:
            subscribed = threading.Event()
            sub.on_subscribe = lambda *_: subscribed.set()
            sub.subscribe("cameras/+/frames", qos=1)
            assert subscribed.wait(10)
            camera = Camera(broker.host, broker.port)
            messages = [
                camera.encode(
                    f"f{i}", f"cameras/cam{i % 3}/frames", bytes([i % 256]) * (i + 1), [("frame_id", f"f{i}")]
                )
                for i in range(300)
            ]
            sent_at = camera.flood(messages, chunk=16)
            camera.close()
            assert all_in.wait(10)
        finally:
            sub.loop_stop()
            sub.disconnect()
    assert set(sent_at) == {f"f{i}" for i in range(300)}
    by_id = {dict(m.properties.UserProperty)["frame_id"]: m for m in got}  # type: ignore[union-attr]
    assert len(by_id) == 300
    assert by_id["f299"].topic == "cameras/cam2/frames"
    assert by_id["f299"].payload == bytes([299 % 256]) * 300  # a payload of over 127 bytes: a 2-byte length


def test_listener_acknowledges_and_decodes_every_result() -> None:
    with PrivateBroker() as broker:
        # A window of 10: the broker stops sending QoS 1 results unless the listener acknowledges them.
        listener = Listener(broker.host, broker.port, "defed/+/+", expected=200, receive_maximum=10)
        pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        try:
            infos = [
                pub.publish(f"defed/cam{i % 4}/label", json.dumps({"frame_id": f"r{i}"}), qos=i % 2) for i in range(200)
            ]
            for info in infos:
                info.wait_for_publish(10)
            assert listener.wait(10)
        finally:
            pub.loop_stop()
            pub.disconnect()
            listener.close()
    results = listener.results()
    assert sorted(event["frame_id"] for _, _, event in results) == sorted(f"r{i}" for i in range(200))
    assert {topic for _, topic, _ in results} == {f"defed/cam{k}/label" for k in range(4)}
