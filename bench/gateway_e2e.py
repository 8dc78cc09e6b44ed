"""End-to-end gateway throughput and latency through a private Mosquitto.

    python bench/gateway_e2e.py --frames 5000 --batch 64            # the MNIST bundle when shipped
    python bench/gateway_e2e.py --frames 300 --bundle untrained       # a quick check of the harness

Measured in one run, on the same encoded MNIST test frames:
  1. the gateway (`defed serve` as a subprocess) at max_batch=B: frames/s from the first frame
     published to the last result received; latency percentiles, both as the gateway reports it
     (receipt → result published) and as a camera sees it (publish → result received);
  2. the bundle offline: `bundle.predict` on decoded uint8 batches of B frames;
  3. the same gateway at max_batch=1 (what a per-frame gateway does).
The camera publishes the whole set at once, so this is the saturated throughput; the camera-side
latency then includes queueing behind earlier frames.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import torch
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from defed_core import Bundle
from defed_core.testing import untrained_bundle
from gateway.broker import PrivateBroker

MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist.npz"


def encoded_frames(n: int) -> list[bytes]:
    with np.load(MNIST) as data:
        digits = data["x_test"][:n]
    return [cv2.imencode(".png", d)[1].tobytes() for d in digits]


def resolve_bundle(name: str, workdir: Path) -> Path:
    if name == "untrained":
        path = workdir / "untrained"
        untrained_bundle(path)
        return path
    if Path(name).is_dir():
        return Path(name)
    from defed_core.bundle import default_bundle_path

    return default_bundle_path(name)


def offline_fps(bundle_path: Path, frames: list[bytes], batch: int, threads: int) -> float:
    """bundle.predict alone on the decoded frames, batch by batch."""
    torch.set_num_threads(threads)
    bundle = Bundle.load(bundle_path, "cpu")
    pixels = np.stack([cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_GRAYSCALE) for f in frames])[..., None]
    x = torch.from_numpy(pixels)  # (N, H, W, 1) uint8
    bundle.predict(x[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        bundle.predict(x[i:i + batch])
    return len(x) / (time.perf_counter() - start)


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(np.array(values), [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_gateway(workdir: Path, port: int, bundle: Path, batch: int, wait_ms: float,
                  threads: int, frames: int = 4096) -> tuple[subprocess.Popen[bytes], float]:
    """The gateway as a subprocess, and the seconds from exec to systemd READY=1.

    Its queue holds the whole flood: a full queue drops frames (by design, counted), and a dropped
    frame has no result to wait for.
    """
    config = workdir / f"gateway-{batch}.toml"
    config.write_text(
        f'state_dir = "{workdir / f"state-{batch}"}"\nstats_interval_s = 60\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_id = "bench-{uuid.uuid4().hex[:6]}"\n'
        f'[batching]\nmax_batch = {batch}\nmax_wait_ms = {wait_ms}\nqueue_capacity = {max(4096, frames)}\n'
        f'[model]\nbundle = "{bundle}"\ndevice = "cpu"\nthreads = {threads}\n'
        '[metrics]\nlisten = ""\n[log]\nlevel = "warning"\nformat = "json"\n'
    )
    notify_path = workdir / f"notify-{batch}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(120)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], env=env,
                               stderr=(workdir / f"gateway-{batch}.log").open("wb"))
    while b"READY=1" not in notify.recv(4096):
        pass
    ready_s = time.perf_counter() - started
    notify.close()
    return process, ready_s


def run_gateway(broker: PrivateBroker, workdir: Path, bundle: Path, frames: list[bytes], batch: int,
                wait_ms: float, threads: int) -> dict[str, Any]:
    process, ready_s = start_gateway(workdir, broker.port, bundle, batch, wait_ms, threads, len(frames))
    done = threading.Event()
    received: dict[str, tuple[float, float]] = {}  # frame_id → (arrival time, gateway latency_ms)

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        event = json.loads(message.payload)
        received[event["frame_id"]] = (time.perf_counter(), event.get("latency_ms", float("nan")))
        if len(received) == len(frames):
            done.set()

    listener = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    listener.on_message = on_message
    listener.connect(broker.host, broker.port)
    listener.subscribe("defed/+/+", qos=1)
    listener.loop_start()
    camera = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    camera.max_inflight_messages_set(0)
    camera.connect(broker.host, broker.port)
    camera.loop_start()
    time.sleep(0.5)  # let the listener's subscription settle
    sent_at: dict[str, float] = {}
    start = time.perf_counter()
    for i, payload in enumerate(frames):
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("frame_id", f"b{batch}-{i}")]
        sent_at[f"b{batch}-{i}"] = time.perf_counter()
        camera.publish(f"cameras/cam{i % 8}/frames", payload, qos=1, properties=props)
    finished = done.wait(600)
    elapsed = max(t for t, _ in received.values()) - start if received else float("nan")
    rss_mb = peak_rss_mb(process.pid)
    process.terminate()
    process.wait(60)
    for client in (camera, listener):
        client.disconnect()
        client.loop_stop()
    if not finished:
        raise SystemExit(f"only {len(received)} of {len(frames)} results arrived at max_batch={batch}")
    return {
        "max_batch": batch,
        "fps": round(len(frames) / elapsed, 1),
        "startup_to_ready_s": round(ready_s, 2),
        "peak_rss_mb": round(rss_mb, 1),
        "gateway_latency_ms": percentiles([lat for _, lat in received.values()]),
        "camera_latency_ms": percentiles([(received[k][0] - sent_at[k]) * 1000 for k in received]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--bundle", default="mnist", help="shipped bundle name, directory, or 'untrained'")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="torch threads, in the gateway and offline alike")
    parser.add_argument("--skip-per-frame", action="store_true", help="do not run the max_batch=1 gateway")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="defed-bench-") as tmp:
        workdir = Path(tmp)
        bundle = resolve_bundle(args.bundle, workdir)
        frames = encoded_frames(args.frames)
        offline = offline_fps(bundle, frames, args.batch, args.threads)
        with PrivateBroker() as broker:
            batched = run_gateway(broker, workdir, bundle, frames, args.batch, args.max_wait_ms, args.threads)
            per_frame = None if args.skip_per_frame else run_gateway(
                broker, workdir, bundle, frames, 1, args.max_wait_ms, args.threads)
    report = {
        "bundle": args.bundle, "frames": args.frames, "threads": args.threads,
        "offline_fps": round(offline, 1), "gateway": batched,
        "ratio_vs_offline": round(batched["fps"] / offline, 3),
    }
    if per_frame is not None:
        report |= {"gateway_max_batch_1": per_frame,
                   "ratio_vs_max_batch_1": round(batched["fps"] / per_frame["fps"], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
