"""From the ensemble's batch Decision to per-frame verdicts and the JSON events of DESIGN §5."""

from __future__ import annotations

import json
from typing import Any

from defed_core import Decision
from gateway.frames import Frame, Rejection, Verdict


def verdicts(decision: Decision) -> list[Verdict]:
    """Split a batch Decision (CPU tensors) into one Verdict per frame.

    `tolist()` on whole tensors converts the batch in one pass instead of N×K scalar reads.
    """
    labels, originals = decision.label.tolist(), decision.original_label.tolist()
    adversarial, confidence = decision.adversarial.tolist(), decision.confidence.tolist()
    scores, flags = decision.scores.tolist(), decision.member_flags.tolist()
    return [
        Verdict(labels[i], originals[i], adversarial[i], confidence[i], scores[i],
                [k for k, flagged in enumerate(flags[i]) if flagged])
        for i in range(len(labels))
    ]


class EventFormatter:
    """Builds the label / quarantine / error payloads for one bundle."""

    def __init__(self, bundle_name: str, bundle_version: str, classes: list[str], thresholds: list[float]) -> None:
        self.bundle = {"name": bundle_name, "version": bundle_version}
        self.classes = classes
        self.thresholds = thresholds

    def result(self, frame: Frame, verdict: Verdict, latency_ms: float, audit_id: int | None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "device_id": frame.delivery.device_id,
            "frame_id": frame.frame_id,
            "ts": frame.ts,
            "label": verdict.label,
            "class": self.classes[verdict.label],
            "confidence": round(verdict.confidence, 6),
            "adversarial": verdict.adversarial,
            "scores": [round(s, 6) for s in verdict.scores],
            "bundle": self.bundle,
            "latency_ms": round(latency_ms, 3),
        }
        if verdict.adversarial:
            event |= {
                "original_label": verdict.original_label,
                "flagged_by": verdict.flagged_by,
                "thresholds": self.thresholds,
                "audit_id": audit_id,
            }
        return event

    @staticmethod
    def error(rejection: Rejection, latency_ms: float) -> dict[str, Any]:
        return {
            "device_id": rejection.delivery.device_id,
            "frame_id": rejection.frame_id,
            "error": rejection.error,
            "detail": rejection.detail,
            "latency_ms": round(latency_ms, 3),
        }


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()
