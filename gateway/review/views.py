"""Denoised views of a quarantined frame: each member's D_i(x), recomputed with the event's own bundle.

The stored frame goes through the daemon's own conversion (`gateway.codec`) and the bundle named
in the event, loaded here on the CPU, once per process. Only the very version that decided the
event is used: with another version the views would show what a different network does, so a
version mismatch (or a bundle this server cannot find) yields a notice instead of pictures.

Rendered pictures are kept in a bounded LRU cache keyed by the event id *and* the frame's SHA-256,
so an id that SQLite reuses after a prune can never show another frame's views.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from defed_core.bundle import Bundle, BundleError, default_bundle_path, shipped_bundles
from gateway.codec import FrameCodec, FrameError, decode_image
from gateway.review import images

CACHE_EVENTS = 128  # events whose rendered views are kept (a few KB each for 28×28 frames)


@dataclass(frozen=True)
class MemberView:
    """One ensemble member's view of the frame."""

    index: int
    sigma: float
    edge: str
    denoised_png: bytes
    difference_png: bytes
    max_difference: float  # the top of the heatmap's colour scale, in pixel units of [0, 1]
    recomputed_score: float  # s_i(x) computed here; it should match the stored score


@dataclass(frozen=True)
class EventViews:
    """What the event page can show beside the stored fields; `notice` says why there are no pictures."""

    notice: str | None = None
    bundle: str | None = None  # "mnist 1.0.0": the bundle that computed the views
    classes: tuple[str, ...] = ()
    input_png: bytes | None = None  # the frame as the model saw it (the bundle's input shape)
    input_converted: bool = False  # whether that differs in size or channels from the frame as received
    members: tuple[MemberView, ...] = ()

    @property
    def available(self) -> bool:
        return self.notice is None


class BundleShelf:
    """The bundles this server may use: `model.bundle` of the gateway's settings and the shipped ones.

    Each is loaded on first use and kept; a bundle that fails to load is remembered as its error.
    """

    def __init__(self, configured: str | None = None) -> None:
        self.configured = configured
        self.loaded: dict[Path, Bundle | str] = {}
        self.lock = threading.Lock()

    def load(self, path: Path) -> Bundle | str:
        with self.lock:
            if path not in self.loaded:
                try:
                    self.loaded[path] = Bundle.load(path, "cpu", fast=False)
                except (BundleError, OSError) as exc:
                    self.loaded[path] = f"the bundle at {path} does not load: {exc}"
            return self.loaded[path]

    def find(self, name: str) -> Bundle | str:
        """The bundle called `name`, or why there is none."""
        if self.configured is not None and Path(self.configured).is_dir():
            configured = self.load(Path(self.configured))
            if isinstance(configured, Bundle) and configured.name == name:
                return configured
        if name in shipped_bundles():
            return self.load(default_bundle_path(name))
        return (
            f"bundle {name!r} is not available to this server: it is not shipped with defed, and model.bundle "
            f"({self.configured or 'unset'}) is another; run the server with the gateway's --config"
        )


def usable(bundle: Bundle | str, version: str) -> Bundle | str:
    """The bundle if it is exactly the version that decided the event, else the notice to show."""
    if isinstance(bundle, str):
        return bundle
    if bundle.version != version:
        return (
            f"this event was decided by bundle {bundle.name} {version}, but this server has {bundle.name} "
            f"{bundle.version}: denoised views are not shown, since they would come from another version"
        )
    return bundle


class EventViewer:
    """Denoised views per event, computed on demand and cached."""

    def __init__(
        self, bundles: BundleShelf, read_image: Callable[[int], bytes | None], cache_events: int = CACHE_EVENTS
    ) -> None:
        self.bundles = bundles
        self.read_image = read_image
        self.inference = threading.Lock()  # one frame at a time: the hub's cores belong to the daemon
        self.views = lru_cache(maxsize=cache_events)(self.compute)

    def compute(self, event_id: int, image_sha256: str, bundle_name: str, bundle_version: str) -> EventViews:
        """The views of one event (the cache key is these arguments)."""
        found = usable(self.bundles.find(bundle_name), bundle_version)
        if isinstance(found, str):
            return EventViews(notice=found)
        image = self.read_image(event_id)
        if image is None:
            return EventViews(notice="the frame was not stored (audit.store_images was off): nothing to denoise")
        try:
            decoded = decode_image(image)
            pixels = FrameCodec(found.input_shape, len(image)).to_input_shape(decoded)  # (H, W, C) uint8
        except FrameError as exc:
            return EventViews(notice=f"the stored frame does not decode: {exc.detail}")
        channels = 1 if decoded.ndim == 2 else decoded.shape[2]
        converted = decoded.shape[:2] != pixels.shape[:2] or channels != pixels.shape[2]
        return self.render(found, pixels, converted)

    def render(self, bundle: Bundle, pixels: np.ndarray, converted: bool) -> EventViews:
        with self.inference, torch.inference_mode():
            x = bundle.prepare(pixels[None])  # (1, C, H, W)
            out, scores = bundle.outputs(x)
        frame = x[0].numpy()  # (C, H, W)
        denoised = out.denoised[:, 0].numpy()  # (K, C, H, W)
        members = []
        for k, member in enumerate(bundle.spec.members):
            diff = images.difference(frame, denoised[k])  # (H, W)
            members.append(
                MemberView(
                    index=k,
                    sigma=member.sigma,
                    edge=member.config.edge,
                    denoised_png=images.model_view_png(denoised[k]),
                    difference_png=images.heatmap_png(diff),
                    max_difference=float(diff.max()),
                    recomputed_score=float(scores[0, k]),
                )
            )
        return EventViews(
            bundle=f"{bundle.name} {bundle.version}",
            classes=tuple(bundle.classes),
            input_png=images.model_view_png(frame),
            input_converted=converted,
            members=tuple(members),
        )
