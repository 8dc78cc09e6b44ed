"""The whole benchmark suite in one command; writes a Markdown table and the raw figures.

    python bench/run.py                       # the shipped MNIST bundle, results in runs/bench/
    python bench/run.py --quick               # a short pass to check the harness

1. The ensemble by batch size: plain eager modules vs the fast path in torch and on ONNX Runtime
   (`bench/ensemble.py`), frames/s, median latency per batch and the speed-ups.
2. The gateway end to end through a private Mosquitto (`bench/gateway_e2e.py`) at `max_batch` 64
   and 1: frames/s, gateway and camera latency percentiles, the ratio to the offline fast path
   and to the per-frame gateway, the start-up time to systemd READY=1 and the peak RSS.

Run it on an otherwise idle machine: every figure is a wall-clock measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ensemble import load_paths, markdown, rows
from gateway_e2e import encoded_frames, measure, resolve_bundle

from defed_core.data import load_sample
from gateway.broker import PrivateBroker


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), {platform.machine()}, torch {torch.__version__}"


def gateway_section(report: dict[str, Any]) -> str:
    lines = [
        f"Engine: {report['backend']}. The median of {len(report['rounds'])} rounds (offline, then gateway):",
        "",
        "| run | frames/s | gateway latency p50 / p95 / p99 (ms) | camera latency p50 / p95 / p99 (ms) "
        "| start-up to READY (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
        f"| offline `bundle.predict`, batch {report['batch']} | {report['offline_fps']} | — | — | — | — |",
    ]
    for run in (report["gateway"], report["gateway_max_batch_1"]):
        g, c = run["gateway_latency_ms"], run["camera_latency_ms"]
        lines.append(
            f"| gateway, `max_batch` = {run['max_batch']} | {run['fps']} | {g['p50']} / {g['p95']} / {g['p99']} "
            f"| {c['p50']} / {c['p95']} / {c['p99']} | {run['startup_to_ready_s']} | {run['peak_rss_mb']} |"
        )
    cpu = report["gateway"]["cpu_seconds"]
    budget = report["cpu_budget"]
    rounds = ", ".join(f"{r['gateway_fps']} ÷ {r['offline_fps']} = {r['ratio']:.2f}" for r in report["rounds"])
    startups = " / ".join(str(r["startup_to_ready_s"]) for r in report["rounds"])
    lines += [
        "",
        f"Ratios: gateway ÷ offline fast path = **{report['ratio_vs_offline']:.2f}** (rounds: {rounds}); "
        f"gateway ÷ gateway at `max_batch` = 1 = **{report['ratio_vs_max_batch_1']:.2f}**.",
        "",
        f"CPU seconds during the median round's flood of {cpu['wall']} s: gateway {cpu['gateway']}, "
        f"broker {cpu['broker']}, cameras and listener {cpu['load_generator']}. Per frame: the model "
        f"{budget['model_ms_per_frame']} ms (its CPU time offline), the gateway beyond the model "
        f"{budget['gateway_beyond_model_ms_per_frame']} ms, broker and cameras "
        f"{budget['broker_and_cameras_ms_per_frame']} ms; on {os.cpu_count()} cores that allows a gateway ÷ offline "
        f"of at most **{budget['ratio_bound']:.2f}**.",
        "",
        f"Start-up to READY by round: {startups} s (the first start exports the model's graph, the later ones "
        "read it from the cache, as a restarted service does).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="mnist")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--frames", type=int, default=10000, help="frames per gateway run (MNIST has 10,000 test digits)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads everywhere")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"],
                    help="the gateway's engine (model.backend), and the offline path it is compared with")
    ap.add_argument("--rounds", type=int, default=5, help="offline + gateway rounds; the median is reported")
    ap.add_argument("--quick", action="store_true", help="short runs, to check the harness")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seconds, frames = (0.5, 300) if args.quick else (3.0, args.frames)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    with tempfile.TemporaryDirectory(prefix="defed-bench-") as tmp:
        workdir = Path(tmp)
        bundle_path = resolve_bundle(args.bundle, workdir)
        bundles = load_paths(str(bundle_path), "auto")
        images = load_sample("cifar10" if bundles["plain"].input_shape[0] == 3 else "mnist").images
        print("ensemble: plain vs fast …", flush=True)
        ensemble_rows = rows(bundles, images, [1, 8, 64, 256], seconds, threads=args.threads)
        ensemble_table = markdown(ensemble_rows, list(bundles))
        print(ensemble_table, flush=True)
        del bundles

        print("gateway end to end …", flush=True)
        with PrivateBroker() as broker:
            gateway = measure(broker, workdir, bundle_path, encoded_frames(frames), args.batch, args.threads,
                              args.backend, 1 if args.quick else args.rounds)
    report = {"machine": machine(), "date": started, "bundle": args.bundle, "threads": args.threads,
              "frames": frames, "ensemble": ensemble_rows, "gateway": gateway}
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (
        f"# Benchmark — bundle `{args.bundle}`, {args.threads} threads\n\n{report['machine']}; {started}.\n\n"
        f"## Ensemble, `Bundle.predict` by batch size\n\n{ensemble_table}\n\n"
        f"## Gateway end to end ({frames} PNG frames from 8 devices, one flood)\n\n{gateway_section(gateway)}\n"
    )
    (args.out / "bench.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
