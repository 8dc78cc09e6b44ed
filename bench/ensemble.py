"""Ensemble throughput and latency by batch size: plain modules vs the fast path (same weights).

    python bench/ensemble.py --bundle mnist --batches 1,8,64,256 --seconds 3

Every path runs `Bundle.predict` (validation, networks, scores, decisions, copy to the CPU) on the
same real test images of the bundle's dataset: the plain eager modules built from DESIGN §1, the
fast path in torch (`defed_core.fast.FastEnsemble`) and, on a CPU with onnxruntime installed, the
fast path on ONNX Runtime (`defed_core.onnx_backend`). Each cell runs for about `--seconds` after a
warm-up, in rounds that alternate between the paths; frames/s (batch ÷ median time) and per-batch
latency (median) are printed as a table, with speed-ups over plain.
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


def timings(bundle: Bundle, batch: torch.Tensor, seconds: float) -> list[float]:
    """Seconds per `bundle.predict` call on `batch`, for about `seconds` (at least 3 calls)."""
    bundle.predict(batch)  # warm: oneDNN builds its kernels for a new shape on the first call
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        bundle.predict(batch)
        times.append(time.perf_counter() - start)
    return times


def rows(
    bundles: dict[str, Bundle], images: np.ndarray, batches: list[int], seconds: float, rounds: int = 6,
    threads: int | None = None,
) -> list[dict[str, float]]:
    """One row per batch size: frames/s and median ms per batch for every path.

    The paths take turns in `rounds` short rounds rather than one long run each, so that a
    stretch of interference from the rest of the machine falls on all of them alike, with a pause
    between turns so that one path's spinning thread pool does not slow the next; the median
    per-batch time over all rounds gives both figures (frames/s = batch size ÷ median).
    Every path gets the same `threads` (default: torch's thread count at the start), each the
    way its engine uses them (`Bundle.use_threads`).
    """
    threads = threads or torch.get_num_threads()
    table = []
    for b in batches:
        batch = torch.from_numpy(images[np.arange(b) % len(images)])  # (b, H, W, C)
        times: dict[str, list[float]] = {name: [] for name in bundles}
        for _ in range(rounds):
            for name, bundle in bundles.items():
                bundle.use_threads(threads)
                times[name] += timings(bundle, batch, seconds / rounds)
                time.sleep(0.2)  # the previous path's idle worker threads stop spinning before the next starts
        row: dict[str, float] = {"batch": b}
        for name, t in times.items():
            median = statistics.median(t)
            row[f"{name}_fps"], row[f"{name}_ms"] = b / median, median * 1000
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
    if torch.device(bundles["plain"].device).type == "cpu":
        bundles["fast-onnx"] = Bundle.load(path, device, backend="onnxruntime")
    return bundles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="mnist")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0, help="model threads for every path (0: torch's default)")
    args = ap.parse_args()
    bundles = load_paths(str(resolve_bundle_path(args.bundle)), "auto")
    plain = bundles["plain"]
    images = load_sample("cifar10" if plain.input_shape[0] == 3 else "mnist").images  # (256, H, W, C) uint8
    threads = args.threads or torch.get_num_threads()
    print(f"device {plain.device}, torch {torch.__version__}, {threads} threads")
    table = rows(bundles, images, [int(s) for s in args.batches.split(",")], args.seconds, threads=threads)
    print(markdown(table, list(bundles)))


if __name__ == "__main__":
    main()
