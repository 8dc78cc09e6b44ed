"""Ensemble throughput and latency by batch size: plain modules vs the fast path (same weights).

    python bench/ensemble.py --bundle mnist --batches 1,8,64,256 --seconds 3

Both paths run `Bundle.predict` (validation, networks, scores, decisions, copy to the CPU) on the
same real MNIST test digits; the fast path is `defed_core.fast.FastEnsemble`. Each cell runs for
about `--seconds` after a warm-up; frames/s and per-batch latency (median) are printed as a table.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="mnist")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_bundle_path(args.bundle)
    plain, fast = Bundle.load(path, "auto", fast=False), Bundle.load(path, "auto", fast=True)
    images = load_sample("mnist").images  # (256, 28, 28, 1) uint8
    print(f"device {plain.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| batch | plain frames/s | fast frames/s | speed-up | plain ms/batch | fast ms/batch |")
    print("|---|---|---|---|---|---|")
    for b in (int(s) for s in args.batches.split(",")):
        batch = torch.from_numpy(images[np.arange(b) % len(images)])  # (b, 28, 28, 1)
        p_fps, p_ms = measure(plain, batch, args.seconds)
        f_fps, f_ms = measure(fast, batch, args.seconds)
        print(f"| {b} | {p_fps:.0f} | {f_fps:.0f} | {f_fps / p_fps:.2f}× | {p_ms:.2f} | {f_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
