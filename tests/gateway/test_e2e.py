"""End to end: the real daemon, a real mosquitto, real MNIST digits, a real SQLite audit log."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from gateway_helpers import (
    Camera,
    GatewayProcess,
    ResultListener,
    attacked,
    envelope,
    gateway_settings,
    jpeg,
    png,
    running_gateway,
    unacknowledged,
)

from gateway.audit import AuditLog
from gateway.broker import PrivateBroker
from gateway.codec import content_frame_id

Key = tuple[str, str]


def send_stream(camera: Camera, digits: np.ndarray, devices: int = 4, start: int = 0) -> dict[Key, bytes]:
    """Digits, every third one attacked; bare, bare with a user-property id, or enveloped.

    Returns the image bytes sent for every (device_id, frame_id).
    """
    sent: dict[Key, bytes] = {}
    for i in range(start, start + len(digits)):
        image = attacked(digits[i - start: i - start + 1], seed=i)[0] if i % 3 == 0 else digits[i - start]
        device, data = f"cam{i % devices}", png(image)
        if i % 4 == 0:
            camera.send(device, envelope(data, f"env-{i}", ts=1000.0 + i))
            sent[(device, f"env-{i}")] = data
        elif i % 4 == 1:
            camera.send(device, data, frame_id=f"prop-{i}", ts=1000.0 + i)
            sent[(device, f"prop-{i}")] = data
        else:
            camera.send(device, data)
            sent[(device, content_frame_id(data))] = data
    return sent


def result_counts(listener: ResultListener) -> Counter[Key]:
    return Counter((p["device_id"], p["frame_id"]) for _, p in listener.results())


def audit_rows(state_dir: Path) -> dict[Key, Any]:
    audit = AuditLog(f"sqlite:///{state_dir / 'audit.sqlite3'}")
    rows = {(e.device_id, e.frame_id): e for e in audit.events()}
    assert len(rows) == len(audit.events()), "duplicate audit rows"
    audit.close()
    return rows


def check_routing(listener: ResultListener, sent: dict[Key, bytes], state_dir: Path) -> None:
    """Results on the right topics; every quarantined frame, and only those, audited with its bytes."""
    rows = audit_rows(state_dir)
    for topic, event in listener.results():
        key = (event["device_id"], event["frame_id"])
        if key not in sent:
            continue
        kind = "quarantine" if event["adversarial"] else "label"
        assert topic == f"defed/{event['device_id']}/{kind}", (topic, event)
        if event["adversarial"]:
            assert rows[key].id == event["audit_id"] and rows[key].image == sent[key]
            assert set(event) >= {"original_label", "flagged_by", "thresholds", "audit_id", "latency_ms", "scores"}
        else:
            assert key not in rows
    assert set(rows) <= set(sent)


class TestStream:
    def test_every_frame_gets_one_result_and_nothing_is_left_unacknowledged(
            self, broker: PrivateBroker, listener: ResultListener, bundles: dict[str, Path],
            digits: np.ndarray, tmp_path: Path) -> None:
        """120 MNIST frames from 4 devices, benign and attacked, bare and enveloped: one result each."""
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["some"])
        with running_gateway(settings, tmp_path) as gateway:
            camera = Camera(broker.port)
            sent = send_stream(camera, digits)
            camera.flush()
            assert listener.wait_for_frames(set(sent), 60), (listener.missing(set(sent)), gateway.log())
            assert listener.wait_for(lambda s: any(t == "defed/stats" for t, _ in s.messages), 10)
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
        assert set(result_counts(listener).values()) == {1}
        kinds = Counter(t.rsplit("/", 1)[1] for t, _ in listener.results())
        assert kinds["label"] > 0 and kinds["quarantine"] > 0, kinds
        check_routing(listener, sent, tmp_path / "state")
        assert listener.statuses()[-1] == "offline"
        assert unacknowledged(broker.port, settings["mqtt"]["client_id"]) == 0
        stats = [p for t, p in listener.messages if t == "defed/stats"][-1]
        assert stats["received"] == 120 and stats["errors"] == 0 and stats["dropped"] == 0

    def test_mqtt_311(self, broker: PrivateBroker, listener: ResultListener, bundles: dict[str, Path],
                      digits: np.ndarray, tmp_path: Path) -> None:
        """Under MQTT 3.1.1 frames are answered and acknowledged in a persistent session too."""
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["all"], mqtt={"protocol": "3.1.1"})
        with running_gateway(settings, tmp_path) as gateway:
            camera = Camera(broker.port)
            sent = {(f"cam{i}", content_frame_id(png(d))): png(d) for i, d in enumerate(digits[:12])}
            for device, _ in sent:
                camera.send(device, sent[(device, _)])
            camera.flush()
            assert listener.wait_for_frames(set(sent), 30), gateway.log()
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
        check_routing(listener, sent, tmp_path / "state")
        assert unacknowledged(broker.port, settings["mqtt"]["client_id"], protocol="3.1.1") == 0


def hostile_payloads(digit: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """Each hostile payload and the topic kind it must be answered on."""
    rng = np.random.default_rng(7)
    big_png = png(rng.integers(0, 255, (64, 64), dtype=np.uint8))
    big_jpeg = jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    rgba = np.dstack([np.dstack([digit] * 3), np.full_like(digit, 255)])
    return {
        "empty": (b"", "error"),
        "random": (rng.bytes(4096), "error"),
        "truncated-png": (big_png[: len(big_png) // 2], "error"),
        "truncated-jpeg": (big_jpeg[: len(big_jpeg) // 3], "any"),  # OpenCV may decode a partial JPEG
        "one-pixel": (png(np.array([[255]], np.uint8)), "result"),
        "thirty-mb": (b"\xff\xd8" + rng.bytes(30 * 1024 * 1024), "error"),
        "broken-json": (b'{"image": "AAA', "error"),
        "bad-base64": (b'{"frame_id": "x", "image": "@@@@"}', "error"),
        "no-image": (b'{"frame_id": "x", "ts": 1.0}', "error"),
        "rgba-png": (png(rgba), "result"),
        "vga-jpeg": (jpeg(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)), "result"),
        "nul-bytes": (b"\0" * 1024, "error"),
    }


class TestModelEngine:
    def test_onnxruntime_on_a_cpu_by_default_and_its_graph_is_read_back_on_restart(
            self, broker: PrivateBroker, listener: ResultListener, bundles: dict[str, Path],
            digits: np.ndarray, tmp_path: Path) -> None:
        """`model.backend = auto` runs ONNX Runtime here; the second start reads the exported graph."""
        cache = tmp_path / "model-cache"
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["some"], model={"cache_dir": cache})
        camera = Camera(broker.port)
        stored_at = 0
        for start in range(2):
            with running_gateway(settings, tmp_path) as gateway:
                ready = [e for e in gateway.log_events() if e["event"] == "model ready"]
                assert ready and ready[-1]["backend"] == "onnxruntime", gateway.log()
                (graph,) = cache.glob("*.onnx")
                if start == 0:
                    stored_at = graph.stat().st_mtime_ns
                else:
                    assert graph.stat().st_mtime_ns == stored_at  # read, not exported and written again
                camera.send("cam1", png(digits[start]), frame_id=f"start-{start}")
                assert listener.wait_for_frames({("cam1", f"start-{start}")}, 30), gateway.log()
                gateway.signal(signal.SIGTERM)
                assert gateway.wait() == 0


class TestHostileFrames:
    def test_each_is_answered_and_the_daemon_keeps_serving(
            self, broker: PrivateBroker, listener: ResultListener, bundles: dict[str, Path],
            digits: np.ndarray, tmp_path: Path) -> None:
        """Every hostile payload gets an error event, or a result where the image is valid; then a digit is labelled."""
        payloads = hostile_payloads(digits[0])
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["none"])
        with running_gateway(settings, tmp_path) as gateway:
            camera = Camera(broker.port)
            for name, (payload, _) in payloads.items():
                camera.send(name, payload)
            camera.flush(60)
            assert listener.wait_for(lambda s: {p["device_id"] for _, p in s.results()} >= set(payloads), 60), \
                gateway.log()
            camera.send("after", png(digits[1]))
            camera.flush()
            assert listener.wait_for(lambda s: any(p["device_id"] == "after" for _, p in s.results()), 30)
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
        answers = {p["device_id"]: (t.rsplit("/", 1)[1], p) for t, p in listener.results()}
        assert len(listener.results()) == len(payloads) + 1
        for name, (_, expected) in payloads.items():
            kind, event = answers[name]
            if expected == "error":
                assert kind == "error", (name, event)
            elif expected == "result":
                assert kind == "label", (name, event)
        assert answers["thirty-mb"][1]["error"] == "payload_too_large"
        assert answers["bad-base64"][1]["error"] == "bad_envelope"
        assert answers["empty"][1]["error"] == "undecodable_image"
        assert answers["after"][0] == "label"
        rejected = [e for e in gateway.log_events() if e.get("event") == "frame rejected"]
        assert rejected and all("device_id" in e and "frame_id" in e for e in rejected)


class TestShutdown:
    def test_sigterm_answers_frames_in_flight(self, broker: PrivateBroker, listener: ResultListener,
                                              bundles: dict[str, Path], digits: np.ndarray, tmp_path: Path) -> None:
        """Frames waiting for a batch when SIGTERM arrives are all answered, audited and acked; exit 0, offline."""
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["all"], stats_interval_s=0.3,
                                    batching={"max_batch": 256, "max_wait_ms": 3000})
        with running_gateway(settings, tmp_path) as gateway:
            camera = Camera(broker.port)
            sent = {(f"cam{i % 3}", content_frame_id(png(d))): png(d) for i, d in enumerate(digits[:50])}
            for (device, _), data in sent.items():
                camera.send(device, data)
            camera.flush()
            assert listener.wait_for(lambda s: any(t == "defed/stats" and p["received"] == 50
                                                   for t, p in s.messages), 30), gateway.log()
            assert not listener.results(), "the batch should still be open"
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
        assert set(result_counts(listener)) == set(sent)
        check_routing(listener, sent, tmp_path / "state")
        assert listener.statuses()[-1] == "offline"
        assert unacknowledged(broker.port, settings["mqtt"]["client_id"]) == 0
        shutting = next(e for e in gateway.log_events() if e.get("event") == "shutting down")
        assert shutting["in_flight"] == 50 and shutting["signal"] == "SIGTERM"


    @staticmethod
    def strand_frames(broker: PrivateBroker, listener: ResultListener, gateway: GatewayProcess,
                      digits: np.ndarray) -> None:
        """Five frames held in an open batch, then the broker stops: they can never be acknowledged."""
        camera = Camera(broker.port)
        for i, d in enumerate(digits[:5]):
            camera.send(f"cam{i}", png(d))
        camera.flush()
        assert listener.wait_for(lambda s: any(t == "defed/stats" and p["received"] == 5
                                               for t, p in s.messages), 30), gateway.log()
        broker.stop()
        gateway.wait_for_log("broker connection lost, reconnecting", 30)

    def test_drain_without_broker_is_bounded(self, broker: PrivateBroker, listener: ResultListener,
                                             bundles: dict[str, Path], digits: np.ndarray, tmp_path: Path) -> None:
        """Frames that cannot be acknowledged do not hold the exit beyond drain_timeout_s; exit 0."""
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["none"], drain_timeout_s=2.0,
                                    stats_interval_s=0.3, batching={"max_batch": 256, "max_wait_ms": 10_000})
        with running_gateway(settings, tmp_path) as gateway:
            self.strand_frames(broker, listener, gateway, digits)
            started = time.monotonic()
            gateway.signal(signal.SIGTERM)
            assert gateway.wait(30) == 0
            assert time.monotonic() - started < 10
        timed_out = next(e for e in gateway.log_events() if e.get("event", "").startswith("drain timed out"))
        assert timed_out["unacknowledged"] == 5
        broker.start()  # for the fixtures' teardown

    def test_second_sigint_forces_exit(self, broker: PrivateBroker, listener: ResultListener,
                                       bundles: dict[str, Path], digits: np.ndarray, tmp_path: Path) -> None:
        """A second Ctrl-C during a drain that cannot finish ends the process at once."""
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["none"], drain_timeout_s=120.0,
                                    stats_interval_s=0.3, batching={"max_batch": 256, "max_wait_ms": 10_000})
        with running_gateway(settings, tmp_path) as gateway:
            self.strand_frames(broker, listener, gateway, digits)
            gateway.signal(signal.SIGINT)
            gateway.wait_for_log("shutting down", 30)
            gateway.signal(signal.SIGINT)
            assert gateway.wait(10) == -signal.SIGINT
        broker.start()


class TestOutages:
    def test_broker_restart_mid_stream(self, broker: PrivateBroker, listener: ResultListener,
                                       bundles: dict[str, Path], digits: np.ndarray, tmp_path: Path) -> None:
        """The broker stops and restarts between two halves of a stream: every frame answered, audit unique."""
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["some"])
        with running_gateway(settings, tmp_path) as gateway:
            camera = Camera(broker.port)
            sent = send_stream(camera, digits[:40])
            camera.flush()
            broker.stop()
            sent |= send_stream(camera, digits[40:80], start=40)  # queued by the camera meanwhile
            broker.start()
            camera.flush(60)
            assert listener.wait_for_frames(set(sent), 90), (listener.missing(set(sent)), gateway.log())
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
        check_routing(listener, sent, tmp_path / "state")
        assert listener.statuses().count("online") >= 2  # republished after the reconnect
        assert unacknowledged(broker.port, settings["mqtt"]["client_id"]) == 0

    def test_gateway_killed_and_restarted_mid_stream(
            self, broker: PrivateBroker, listener: ResultListener, bundles: dict[str, Path],
            digits: np.ndarray, tmp_path: Path) -> None:
        """SIGKILL mid-stream, restart: no frame lost, redelivered frames keep their one audit row and id."""
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["some"],
                                    batching={"max_batch": 8, "max_wait_ms": 5})
        camera = Camera(broker.port)
        first = GatewayProcess(settings, tmp_path).start()
        try:
            sent = send_stream(camera, digits[:60])
            camera.flush()
            assert listener.wait_for(lambda s: len(s.results()) >= 10, 30), first.log()
            first.signal(signal.SIGKILL)
            first.wait()
        finally:
            first.stop()
        assert listener.wait_for(lambda s: s.statuses()[-1:] == ["offline"], 10)  # the Will
        sent |= send_stream(camera, digits[60:100], start=60)  # while the gateway is down
        camera.flush()
        with running_gateway(settings, tmp_path) as second:
            assert listener.wait_for_frames(set(sent), 90), (listener.missing(set(sent)), second.log())
            second.signal(signal.SIGTERM)
            assert second.wait() == 0
        check_routing(listener, sent, tmp_path / "state")
        audit_ids: dict[Key, set[int]] = {}
        for _, event in listener.results():
            if event.get("adversarial"):
                audit_ids.setdefault((event["device_id"], event["frame_id"]), set()).add(event["audit_id"])
        assert all(len(ids) == 1 for ids in audit_ids.values())
        assert unacknowledged(broker.port, settings["mqtt"]["client_id"]) == 0

    def test_broker_down_at_startup_is_retried(self, bundles: dict[str, Path], digits: np.ndarray,
                                               tmp_path: Path) -> None:
        """A gateway started before its broker keeps retrying, then becomes ready and serves."""
        broker = PrivateBroker()
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["none"])
        gateway = GatewayProcess(settings, tmp_path).start(wait_ready=False)
        try:
            gateway.wait_for_log("broker unreachable, retrying", 60)
            with broker:
                gateway.wait_for_notify("READY=1", 30)
                listener, camera = ResultListener(broker.port), Camera(broker.port)
                data = png(digits[0])
                camera.send("cam1", data)
                camera.flush()
                assert listener.wait_for_frames({("cam1", content_frame_id(data))}, 30)
                gateway.signal(signal.SIGTERM)
                assert gateway.wait() == 0
                listener.close()
        finally:
            gateway.stop()
