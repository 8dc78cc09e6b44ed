"""The MagNet-style autoencoder (Meng & Chen, CCS 2017): model, training on benign images, files.

Both of MagNet's layouts, as its authors' `DenoisingAutoEncoder` builds them from a structure
list (3×3 convolutions, "same" padding, the list mirrored into a decoder, a sigmoid output conv):
- `pooled` — the MNIST "detector I" and reformer, structure [3, average, 3]: 3-channel 3×3
  convolutions around one 2×2 average pool and one 2× upsampling;
- flat — the CIFAR-10 detector and reformer, structure [3]: three 3×3 convolutions C → 3 → 3 → C
  at full resolution, no pooling.
Trained to reconstruct benign images that carry a little Gaussian noise (MagNet: std 0.1 on
MNIST, 0.025 on CIFAR-10). Its reconstruction error is a detection score and its output (the
"reformer") is what the classifier labels.

Departures: MagNet uses sigmoids in the hidden layers too and trains for 100 (MNIST) or 400
(CIFAR-10) epochs, with an L2 activity penalty of 1e-9 (left out: negligible). With sigmoids the
pooled network stays near the mean image for many epochs (measured here: validation MSE 0.072
after 4 epochs of 55k MNIST images), which would make the baseline a strawman; ReLU hidden
layers reach 0.005 after 30k images, so the hidden layers use ReLU in both layouts. The epochs
are scaled down to this 2-core CPU (`MagNetTraining`, recorded in magnet.json).

Files: `autoencoder.safetensors` plus `magnet.json` (configuration, training settings, history,
the SHA-256 of the weights), the same no-pickle rule as bundles.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from defed_core.bundle import sha256_file
from defed_core.data import ImageSet
from defed_core.training import batches

WEIGHTS = "autoencoder.safetensors"
META = "magnet.json"


class MagNetError(ValueError):
    """A MagNet autoencoder folder that is missing or does not match its metadata."""


@dataclass(frozen=True)
class MagNetTraining:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    images_per_epoch: int | None = 20_000  # a fresh random subset each epoch; None = all
    noise: float = 0.1  # std of the Gaussian noise on training inputs, as in MagNet
    seed: int = 0


class Autoencoder(nn.Module):
    """(N, C, H, W) in [0, 1] → reconstruction of the same shape; H, W even when pooled."""

    def __init__(self, channels: int = 1, width: int = 3, pooled: bool = True) -> None:
        super().__init__()
        self.channels, self.width, self.pooled = channels, width, pooled

        def conv(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU())

        # Modules are made in forward order, so a seed gives the same initial weights as before the flat layout.
        if pooled:
            self.encoder = nn.Sequential(conv(channels, width), nn.AvgPool2d(2), conv(width, width))
            self.decoder = nn.Sequential(conv(width, width), nn.Upsample(scale_factor=2), conv(width, width),
                                         nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid())
        else:
            self.encoder = nn.Sequential(conv(channels, width))
            self.decoder = nn.Sequential(conv(width, width), nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(x)  # (N, width, H/2, W/2) pooled, (N, width, H, W) flat
        out: Tensor = self.decoder(h)  # (N, C, H, W)
        return out


@dataclass
class MagNet:
    """A trained autoencoder with the record of how it was made."""

    model: Autoencoder
    training: MagNetTraining
    history: list[dict[str, float]] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(root / WEIGHTS))
        doc = {
            "kind": "magnet-autoencoder",
            "model": {"channels": self.model.channels, "width": self.model.width, "pooled": self.model.pooled},
            "training": asdict(self.training),
            "history": self.history,
            "origin": self.origin,
            "sha256": sha256_file(root / WEIGHTS),
        }
        (root / META).write_text(json.dumps(doc, indent=2) + "\n")
        return root

    @classmethod
    def load(cls, path: str | Path) -> MagNet:
        root = Path(path)
        if not (root / META).is_file() or not (root / WEIGHTS).is_file():
            raise MagNetError(f"{root}: no MagNet autoencoder here (expected {META} and {WEIGHTS})")
        doc = json.loads((root / META).read_text())
        if sha256_file(root / WEIGHTS) != doc.get("sha256"):
            raise MagNetError(f"{root / WEIGHTS}: SHA-256 does not match {META}; refusing a modified weight file")
        model = Autoencoder(**doc["model"])
        model.load_state_dict(load_file(str(root / WEIGHTS)))
        return cls(model.eval(), MagNetTraining(**doc["training"]), doc.get("history", []), doc.get("origin", {}))


@torch.no_grad()
def reconstruction_loss(model: nn.Module, images: ImageSet, limit: int = 2000) -> float:
    model.eval()
    total, count = 0.0, 0
    for x, _ in batches(images, 500, None, limit):
        total += float(F.mse_loss(model(x), x, reduction="sum"))
        count += x.numel()
    return total / max(1, count)


def train_magnet(train: ImageSet, validation: ImageSet, training: MagNetTraining, out: str | Path,
                 origin: dict[str, Any] | None = None, pooled: bool = True) -> MagNet:
    """Train on benign images (MSE to the clean image from a noisy input); saved after every epoch."""
    torch.manual_seed(training.seed)
    model = Autoencoder(channels=train.shape[0], pooled=pooled)
    opt = torch.optim.Adam(model.parameters(), lr=training.lr)
    magnet = MagNet(model, training, [], {**(origin or {}), "train_images": len(train)})
    started = time.monotonic()
    for epoch in range(training.epochs):
        model.train()
        rng = np.random.default_rng(training.seed + epoch)
        gen = torch.Generator().manual_seed(training.seed + epoch)
        per_epoch = min(training.images_per_epoch or len(train), len(train))
        bar = tqdm(batches(train, training.batch_size, rng, per_epoch), total=-(-per_epoch // training.batch_size),
                   desc=f"MagNet autoencoder epoch {epoch + 1}/{training.epochs}", leave=False)
        for x, _ in bar:
            noisy = (x + training.noise * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)
            loss = F.mse_loss(model(noisy), x)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.5f}")
        val = reconstruction_loss(model, validation)
        tqdm.write(f"MagNet autoencoder epoch {epoch + 1}/{training.epochs}: validation MSE {val:.5f}")
        magnet.history.append({"epoch": epoch + 1, "val_mse": val, "seconds": round(time.monotonic() - started, 1)})
        magnet.save(out)  # a checkpoint per epoch: an interrupted run keeps its last finished epoch
    model.eval()
    return magnet
