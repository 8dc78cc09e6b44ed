"""Ensemble throughput and latency by batch size: plain modules vs the fast path (same weights).

    python bench/ensemble.py --bundle mnist --batches 1,8,64,256 --seconds 3

Every path runs `Bundle.predict` (validation, networks, scores, decisions, copy to the CPU) on the
same real test images of the bundle's dataset: the plain eager modules built from DESIGN §1, the
fast path in torch (`defed_core.fast.FastEnsemble`) and, on a CPU with onnxruntime installed, the
fast path on ONNX Runtime (`defed_core.onnx_backend`). Each cell runs for about `--seconds` after a
warm-up; frames/s and per-batch latency (median) are printed as a table, with speed-ups over plain.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from defed_core import Bundle
from defed_core.bundle import resolve_bundle_path
from defed_core.data import load_sample
from defed_core.onnx_backend import onnxruntime_available


def measure(bundle: Bundle, batch: torch.Tensor, seconds: float) -> tuple[float, float]:
    """(frames/s, median ms per batch) of `bundle.predict` on `batch`."""
    for _ in range(3):
        bundle.predict(batch)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        bundle.predict(batch)
        times.append(time.perf_counter() - start)
    return len(batch) * len(times) / sum(times), statistics.median(times) * 1000


def rows(bundles: dict[str, Bundle], images: np.ndarray, batches: list[int], seconds: float) -> list[dict[str, float]]:
    """One row per batch size: frames/s and median ms per batch for every path."""
    table = []
    for b in batches:
        batch = torch.from_numpy(images[np.arange(b) % len(images)])  # (b, H, W, C)
        row: dict[str, float] = {"batch": b}
        for name, bundle in bundles.items():
            row[f"{name}_fps"], row[f"{name}_ms"] = measure(bundle, batch, seconds)
        table.append(row)
    return table


def markdown(table: list[dict[str, float]], paths: list[str]) -> str:
    head = ["batch"] + [f"{p} frames/s" for p in paths] + [f"{p} ×" for p in paths[1:]]
    head += [f"{p} ms/batch" for p in paths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [f"{r['batch']:.0f}"] + [f"{r[f'{p}_fps']:.0f}" for p in paths]
        cells += [f"{r[f'{p}_fps'] / r['plain_fps']:.2f}×" for p in paths[1:]]
        cells += [f"{r[f'{p}_ms']:.2f}" for p in paths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_paths(path: str, device: str) -> dict[str, Bundle]:
    bundles = {"plain": Bundle.load(path, device, fast=False), "fast-torch": Bundle.load(path, device, backend="torch")}
    if torch.device(bundles["plain"].device).type == "cpu" and onnxruntime_available():
        bundles["fast-onnx"] = Bundle.load(path, device, backend="onnxruntime")
    return bundles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="mnist")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bundles = load_paths(str(resolve_bundle_path(args.bundle)), "auto")
    plain = bundles["plain"]
    images = load_sample("cifar10" if plain.input_shape[0] == 3 else "mnist").images  # (256, H, W, C) uint8
    print(f"device {plain.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    table = rows(bundles, images, [int(s) for s in args.batches.split(",")], args.seconds)
    print(markdown(table, list(bundles)))


if __name__ == "__main__":
    main()
