"""Counters, Prometheus export, and the broker link's session and PUBACK bookkeeping."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MalformedPacket
from prometheus_client import CollectorRegistry, generate_latest

from gateway.mqtt import BrokerLink, PublishTracker, device_of, read_utf_accepting_bom
from gateway.settings import MqttSettings
from gateway.stats import GatewayStats, StatsCollector


class TestGatewayStats:
    def test_snapshot_has_counters_and_percentiles(self) -> None:
        """The stats payload carries every counter, queue depth and latency / batch percentiles."""
        stats = GatewayStats()
        stats.count("received", 3)
        stats.count("dropped")
        stats.batch(2)
        for ms in (1.0, 2.0, 3.0):
            stats.latency(ms)
        snap = stats.snapshot()
        assert (snap["received"], snap["dropped"], snap["batches"], snap["queue_depth"]) == (3, 1, 1, 0)
        assert snap["latency_ms"]["p50"] == 2.0 and snap["batch_size"]["mean"] == 2.0

    def test_prometheus_export(self) -> None:
        """The same counters appear in the Prometheus exposition."""
        stats = GatewayStats()
        stats.count("quarantined", 4)
        registry = CollectorRegistry()
        registry.register(StatsCollector(stats))
        text = generate_latest(registry).decode()
        assert "defed_frames_quarantined_total 4.0" in text and "defed_queue_depth 0.0" in text


class TestPublishTracker:
    def test_puback_before_registration_still_fires(self) -> None:
        """A PUBACK reported before the mid is registered runs the callback at registration."""
        tracker, fired = PublishTracker(), []
        tracker.delivered(7)
        tracker.register(7, lambda: fired.append(7))
        tracker.register(8, lambda: fired.append(8))
        assert fired == [7]
        tracker.delivered(8)
        assert fired == [7, 8]


class TestBrokerLink:
    def test_mqtt5_session_is_persistent(self) -> None:
        """Under MQTT 5 the CONNECT carries a non-zero Session Expiry Interval and our Receive Maximum."""
        link = BrokerLink(MqttSettings(session_expiry_s=600), "cameras/+/frames", "defed/status", lambda d: None)
        props = link.connect_properties(receive_maximum=512)
        assert props is not None
        assert (props.SessionExpiryInterval, props.ReceiveMaximum) == (600, 512)

    def test_mqtt311_uses_clean_session_off(self) -> None:
        """Under 3.1.1 there are no CONNECT properties and the client keeps its session."""
        link = BrokerLink(MqttSettings(protocol="3.1.1"), "cameras/+/frames", "defed/status", lambda d: None)
        assert link.connect_properties(512) is None
        assert link.client._clean_session is False  # paho has no public getter

    def test_device_id_is_the_wildcard_level(self) -> None:
        """The device id is the topic level matched by the filter's '+'."""
        assert device_of("site/7/cam-3/frames", 2) == "cam-3"


def utf8_string(text: str) -> bytes:
    """An MQTT length-prefixed string; surrogates passed through so that they can be sent at all."""
    data = text.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(2, "big") + data


class TestPropertyStrings:
    def test_a_byte_order_mark_is_accepted(self) -> None:
        """U+FEFF is legal MQTT 5 UTF-8 ([MQTT-1.5.4-3]); paho's own reader would drop the connection."""
        assert read_utf_accepting_bom(utf8_string("\ufeffcam-1") + b"rest", 20) == ("\ufeffcam-1", 10)

    @pytest.mark.parametrize("text", ["frame\0id", "\0"])
    def test_nul_is_refused(self, text: str) -> None:
        with pytest.raises(MalformedPacket, match="surrogate or NUL"):
            read_utf_accepting_bom(utf8_string(text), 20)

    def test_a_surrogate_is_refused(self) -> None:
        with pytest.raises((MalformedPacket, UnicodeDecodeError)):
            read_utf_accepting_bom(utf8_string("a\ud800b"), 20)

    @pytest.mark.parametrize("buffer", [b"\x00", b"\x00\x09short"])
    def test_a_short_buffer_is_refused(self, buffer: bytes) -> None:
        with pytest.raises(MalformedPacket):
            read_utf_accepting_bom(buffer, len(buffer))

    def test_paho_reads_user_properties_through_it(self) -> None:
        """The replacement is installed: a user property with a BOM unpacks instead of raising."""
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("frame_id", "\ufeff42")]
        unpacked = Properties(PacketTypes.PUBLISH)
        unpacked.unpack(props.pack())
        assert unpacked.UserProperty == [("frame_id", "\ufeff42")]
