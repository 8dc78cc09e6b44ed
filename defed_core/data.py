"""Image datasets: the packed MNIST and CIFAR-10 files, MNIST IDX files, and image folders.

Every loader returns `ImageSet`s of uint8 images in (N, H, W, C) layout (RGB for colour) with
int64 labels; `to_tensor` turns a batch into the float (N, C, H, W) in [0, 1] the models take.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

MNIST_CLASSES = [str(d) for d in range(10)]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class DatasetError(ValueError):
    """A dataset path or file that cannot be read as any supported format."""


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, H, W, C) with their int64 labels and the class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DatasetError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, h, w, c = self.images.shape
        return (c, h, w)

    def subset(self, indices: np.ndarray) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices], self.classes)

    def head(self, n: int | None) -> ImageSet:
        return self if n is None or n >= len(self) else self.subset(np.arange(n))


@dataclass(frozen=True)
class Splits:
    train: ImageSet
    test: ImageSet


@dataclass(frozen=True)
class ValidationSplit:
    """Training data with a validation part carved out by a seeded permutation."""

    train: ImageSet
    validation: ImageSet
    seed: int
    indices: np.ndarray  # positions of the validation images in the original training set

    def record(self) -> dict[str, object]:
        """What a bundle records so the split can be checked and re-made."""
        digest = hashlib.sha256(np.sort(self.indices).astype(np.int64).tobytes()).hexdigest()
        return {"seed": self.seed, "size": len(self.indices), "indices_sha256": digest}


def split_validation(train: ImageSet, size: int, seed: int) -> ValidationSplit:
    """Hold out `size` training images, chosen by a permutation seeded with `seed`."""
    if not 0 < size < len(train):
        raise DatasetError(f"validation size {size} must be between 1 and {len(train) - 1}")
    order = np.random.default_rng(seed).permutation(len(train))
    val_idx, train_idx = order[:size], order[size:]
    return ValidationSplit(train.subset(np.sort(train_idx)), train.subset(np.sort(val_idx)), seed, val_idx)


def to_tensor(images: np.ndarray) -> Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(x: Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] → uint8 (N, H, W, C), rounded."""
    return (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# --- formats ----------------------------------------------------------------------------


def load_mnist_npz(path: Path) -> Splits:
    """The packed MNIST file: x_train/x_test uint8 (N, 28, 28), y_train/y_test."""
    with np.load(path) as z:
        return Splits(
            ImageSet(z["x_train"][..., None], z["y_train"].astype(np.int64), MNIST_CLASSES),
            ImageSet(z["x_test"][..., None], z["y_test"].astype(np.int64), MNIST_CLASSES),
        )


def decode_jpeg_blob(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode concatenated JPEG files (image i is blob[off[i]:off[i+1]]) into RGB uint8."""
    out = []
    for a, b in itertools.pairwise(offsets):
        bgr = cv2.imdecode(blob[a:b], cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"undecodable JPEG at bytes {a}..{b}")
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(out)


def load_cifar10_jpeg(path: Path) -> Splits:
    """The packed CIFAR-10 file of JPEG images (decoded here, as a camera frame would be)."""
    with np.load(path) as z:
        classes = [str(c) for c in z["classes"]]
        return Splits(
            ImageSet(decode_jpeg_blob(z["train_jpeg"], z["train_offsets"]), z["y_train"].astype(np.int64), classes),
            ImageSet(decode_jpeg_blob(z["test_jpeg"], z["test_offsets"]), z["y_test"].astype(np.int64), classes),
        )


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped), as distributed for MNIST."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"{root}: no {stem}[.gz] (the standard MNIST IDX file names)")


def load_mnist_idx(root: Path) -> Splits:
    """A folder with the four standard MNIST IDX files (gzipped or not)."""

    def part(images: str, labels: str) -> ImageSet:
        x = read_idx(find_idx(root, images))
        y = read_idx(find_idx(root, labels)).astype(np.int64)
        return ImageSet(x[..., None], y, MNIST_CLASSES)

    return Splits(
        part("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        part("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    )


def read_image(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 (H, W, C), converted by the rule of `fit_image`."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: not an image OpenCV can read")
    return fit_image(img, (channels, *size))


def load_image_folder(
    root: Path, channels: int = 3, size: tuple[int, int] = (32, 32), test_fraction: float = 0.2, seed: int = 0
) -> Splits:
    """`root/<class>/*.png|jpg…`, classes in sorted order; `root/train` and `root/test` if present.

    Without train/test subfolders, a seeded `test_fraction` of the images becomes the test split.
    """

    def read_tree(tree: Path, classes: list[str] | None = None) -> ImageSet:
        names = classes or sorted(p.name for p in tree.iterdir() if p.is_dir())
        images, labels = [], []
        for label, name in enumerate(names):
            files = sorted(p for p in (tree / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            images += [read_image(p, channels, size) for p in files]
            labels += [label] * len(files)
        if not images:
            raise DatasetError(f"{tree}: no images under <class>/ folders")
        return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), names)

    if (root / "train").is_dir() and (root / "test").is_dir():
        train = read_tree(root / "train")
        return Splits(train, read_tree(root / "test", train.classes))
    everything = read_tree(root)
    order = np.random.default_rng(seed).permutation(len(everything))
    n_test = max(1, int(len(order) * test_fraction))
    return Splits(everything.subset(np.sort(order[n_test:])), everything.subset(np.sort(order[:n_test])))


def load_dataset(path: str | Path, channels: int = 3, size: tuple[int, int] = (32, 32)) -> Splits:
    """Any supported dataset, recognised by what the path holds.

    `channels` and `size` apply to image folders only; the packed files keep their own shape.
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        with np.load(p) as z:
            keys = set(z.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            return load_mnist_npz(p)
        if {"train_jpeg", "train_offsets", "test_jpeg", "test_offsets"} <= keys:
            return load_cifar10_jpeg(p)
        raise DatasetError(f"{p}: an .npz file with neither the MNIST nor the CIFAR-10 keys")
    if p.is_dir():
        if any(p.glob("train-images*idx3-ubyte*")):
            return load_mnist_idx(p)
        return load_image_folder(p, channels, size)
    raise DatasetError(f"{p}: no such dataset file or folder")


def fit_image(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A decoded OpenCV image (gray, BGR or BGRA; any size) as uint8 (H, W, C) for `shape` (C, H, W).

    The conversion rule, shared by the gateway, `defed predict` and image-folder datasets:
      1. 16-bit samples are scaled to 8 bits (the high byte);
      2. an alpha channel is composited onto black (transparent pixels become background);
      3. colour → gray by ITU-R BT.601 luma (OpenCV's BGR2GRAY); gray → colour by repeating the
         channel; colour comes out in RGB order;
      4. the whole frame is resized to H×W with area interpolation (no crop, no letterbox: the
         aspect ratio is not kept, since borders the model never saw would hurt more).
    Anything else (other sample types, 2 or 5+ channels, C not 1 or 3) raises DatasetError.
    """
    c, h, w = shape
    if c not in (1, 3):
        raise DatasetError(f"bundle expects {c} channels; only 1 or 3 are supported")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise DatasetError(f"sample type {image.dtype} is not supported (8 or 16-bit integers only)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise DatasetError(f"{image.shape[2] if image.ndim == 3 else image.ndim}-channel images are not supported")
    if c == 1 and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif c == 3:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image.reshape(h, w, c))  # (H, W, C)


def load_sample(name: str = "mnist") -> ImageSet:
    """A small sample of real test images shipped with the package (for the demo and tests).

    256 test images chosen by a seeded permutation, cut by `tools/cut_samples.py` (their test-set
    indices are stored beside them): `mnist`, gray (256, 28, 28, 1); `cifar10`, stored as the
    dataset's original JPEG files and decoded here to RGB (256, 32, 32, 3).
    """
    from importlib import resources

    path = Path(str(resources.files("defed_core") / "samples" / f"{name}-test-sample.npz"))
    if not path.is_file():
        raise DatasetError(f"no shipped sample {name!r}")
    with np.load(path) as z:
        images = decode_jpeg_blob(z["jpeg"], z["offsets"]) if "jpeg" in z.files else z["images"]
        return ImageSet(images, z["labels"].astype(np.int64), [str(c) for c in z["classes"]])
