"""Cut the small test-set samples shipped in `defed_core/samples/` (the demo's and tests' images).

    python tools/cut_samples.py                          # from ../shared/datasets into defed_core/samples
    python tools/cut_samples.py --check                  # the committed samples are what this cuts

Each sample is 256 test images chosen by a permutation seeded with 2026, with their labels, the
class names and their test-set indices (`indices`):
  - `mnist-test-sample.npz`: `images` uint8 (256, 28, 28, 1), in test-set order;
  - `cifar10-test-sample.npz`: the images' original JPEG files, as stored in the dataset (the form
    a camera sends), concatenated in `jpeg` with `offsets` (257; image i is jpeg[off[i]:off[i+1]]).
    CIFAR-10's test set is sorted by class, so this sample keeps the seeded order: any head of it
    covers every class. (MNIST's keeps test-set order, as it was first cut; the figures measured on
    it stay valid.)
`defed_core.data.load_sample` reads both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
SAMPLES = ROOT / "defed_core" / "samples"
SIZE, SEED = 256, 2026


def chosen(n_test: int, keep_order: bool) -> np.ndarray:
    """Test-set indices of the sample."""
    order = np.random.default_rng(SEED).permutation(n_test)[:SIZE]
    return order if keep_order else np.sort(order)


def cut_mnist(datasets: Path) -> dict[str, np.ndarray]:
    with np.load(datasets / "mnist.npz") as z:
        idx = chosen(len(z["y_test"]), keep_order=False)
        return {
            "images": z["x_test"][idx][..., None],
            "labels": z["y_test"][idx].astype(np.int64),
            "indices": idx.astype(np.int64),
            "classes": np.array([str(d) for d in range(10)]),
        }


def cut_cifar10(datasets: Path) -> dict[str, np.ndarray]:
    with np.load(datasets / "cifar10-jpeg.npz") as z:
        blob, offsets = z["test_jpeg"], z["test_offsets"]
        idx = chosen(len(z["y_test"]), keep_order=True)
        files = [blob[offsets[i] : offsets[i + 1]] for i in idx]  # the JPEG bytes, untouched
        return {
            "jpeg": np.concatenate(files),
            "offsets": np.cumsum([0] + [len(f) for f in files]).astype(np.int64),
            "labels": z["y_test"][idx].astype(np.int64),
            "indices": idx.astype(np.int64),
            "classes": np.array([str(c) for c in z["classes"]]),
        }


CUTS = {"mnist": cut_mnist, "cifar10": cut_cifar10}


def same(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    if not path.is_file():
        return False
    with np.load(path) as z:
        return set(z.files) == set(arrays) and all(np.array_equal(z[k], v) for k, v in arrays.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=Path, default=DATASETS, help="folder with mnist.npz and cifar10-jpeg.npz")
    ap.add_argument("--out", type=Path, default=SAMPLES)
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(CUTS)} (default: all)")
    args = ap.parse_args()
    if unknown := set(args.names) - set(CUTS):
        ap.error(f"no sample {', '.join(sorted(unknown))}")
    differ = []
    for name in args.names or CUTS:
        arrays = CUTS[name](args.datasets)
        path = args.out / f"{name}-test-sample.npz"
        if same(path, arrays):
            print(f"{path}: up to date")
        elif args.check:
            differ.append(name)
            print(f"{path}: differs from the cut", file=sys.stderr)
        else:
            np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub wants a file name or IO
            print(f"{path}: {path.stat().st_size:,} bytes")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
