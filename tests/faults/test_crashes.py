"""Crashes under sustained load: the gateway SIGKILLed again and again, the broker restarted.

Guarantee (docs/gateway.md, "Delivery guarantees"): no frame is lost, results are at least once,
and the audit log keeps exactly one row per (device_id, frame_id).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults_helpers import Gateway, Stream, TimedListener, audit_counts, full_or_ci, keys, make_frames, wait_until
from gateway_helpers import Camera, gateway_settings, unacknowledged

from gateway.broker import PrivateBroker


def check_answers(listener: TimedListener, sent: set[tuple[str, str]], audit_url: str,
                  figures: dict[str, Any]) -> None:
    """Every frame answered; one audit row per quarantined frame and no other; figures recorded."""
    counts = listener.result_counts()
    rows = audit_counts(audit_url)
    quarantined = {(p["device_id"], p["frame_id"]) for t, p in listener.results() if t.endswith("/quarantine")}
    figures |= {"sent": len(sent), "answered": len(set(counts) & sent), "lost": len(sent - set(counts)),
                "duplicate_results": sum(n - 1 for n in counts.values()),
                "audit_rows": sum(rows.values()), "duplicate_audit_rows": sum(n - 1 for n in rows.values())}
    assert sent <= set(counts), f"lost: {sorted(sent - set(counts))[:10]}"
    assert all(n == 1 for n in rows.values()), "duplicate audit rows"
    assert set(rows) == quarantined


class TestGatewayKilled:
    @pytest.mark.timeout(full_or_ci(1800, 600))
    def test_repeated_sigkills_during_a_stream(self, broker: PrivateBroker, bundles: dict[str, Path],
                                               digits: np.ndarray, tmp_path: Path, figures: dict[str, Any]) -> None:
        """SIGKILL mid-stream, restart, again and again: nothing lost, one audit row per flagged frame."""
        n, kills, fps = full_or_ci(2000, 600), full_or_ci(5, 3), full_or_ci(40.0, 40.0)
        listener = TimedListener(broker.port)
        state = tmp_path / "state"
        settings = gateway_settings(state, broker.port, bundles["some"],
                                    batching={"max_batch": 16, "max_wait_ms": 10, "queue_capacity": n})
        frames = make_frames(digits, n)
        gateway = Gateway(settings, tmp_path, "gateway-0").start()
        stream = Stream(Camera(broker.port), frames, fps)
        stream.start()
        killed_at, restarts_s = [], []
        try:
            for k in range(kills):
                point = n * (k + 1) // (kills + 1)
                assert wait_until(lambda p=point: stream.sent >= p, 120)
                answered = len(listener.results())
                # Killed while it is working: after it answered something of its own.
                assert listener.wait_for(lambda s, a=answered: len(s.results()) > a, 120), gateway.log()
                killed_at.append(time.monotonic())
                gateway.kill()
                gateway.stop()
                gateway = Gateway(settings, tmp_path, f"gateway-{k + 1}").start()
                restarts_s.append(time.monotonic() - killed_at[-1])
            stream.join()
            assert listener.wait_for_frames(keys(frames), 300), (listener.missing(keys(frames))[:10], gateway.log())
            gateway.signal(signal.SIGTERM)
            assert gateway.wait(60) == 0
        finally:
            stream.stop()
            gateway.stop()
        recoveries = [listener.first_result_after(t) for t in killed_at]
        figures |= {"kills": kills, "stream_fps": round(stream.achieved_fps, 1),
                    "restart_to_ready_s": [round(r, 2) for r in restarts_s],
                    "kill_to_first_result_s": [round(r - t, 2) for r, t in zip(recoveries, killed_at, strict=True)
                                               if r is not None]}
        check_answers(listener, keys(frames), f"sqlite:///{state / 'audit.sqlite3'}", figures)
        assert unacknowledged(broker.port, settings["mqtt"]["client_id"]) == 0
        listener.close()


class TestBrokerRestarted:
    @pytest.mark.timeout(full_or_ci(1800, 600))
    def test_broker_restart_during_a_stream(self, broker: PrivateBroker, bundles: dict[str, Path],
                                            digits: np.ndarray, tmp_path: Path, figures: dict[str, Any]) -> None:
        """The broker stops (saving its persistence file) and restarts mid-stream: nothing lost."""
        n, down_s = full_or_ci(1000, 400), 3.0
        listener = TimedListener(broker.port)
        state = tmp_path / "state"
        settings = gateway_settings(state, broker.port, bundles["some"],
                                    batching={"max_batch": 16, "max_wait_ms": 10, "queue_capacity": n})
        frames = make_frames(digits, n, prefix="b")
        gateway = Gateway(settings, tmp_path).start()
        stream = Stream(Camera(broker.port), frames, 40.0)
        stream.start()
        try:
            assert wait_until(lambda: stream.sent >= n // 3, 120)
            stopped = time.monotonic()
            broker.stop()
            time.sleep(down_s)  # the outage itself: the camera and the gateway see the broker gone
            broker.start()
            restarted = time.monotonic()
            stream.join()
            assert listener.wait_for_frames(keys(frames), 300), (listener.missing(keys(frames))[:10], gateway.log())
            gateway.signal(signal.SIGTERM)
            assert gateway.wait(60) == 0
        finally:
            stream.stop()
            gateway.stop()
        first = listener.first_result_after(restarted)
        figures |= {"broker_down_s": round(restarted - stopped, 2), "stream_fps": round(stream.achieved_fps, 1),
                    "broker_start_to_first_result_s": None if first is None else round(first - restarted, 2)}
        check_answers(listener, keys(frames), f"sqlite:///{state / 'audit.sqlite3'}", figures)
        assert unacknowledged(broker.port, settings["mqtt"]["client_id"]) == 0
        listener.close()
