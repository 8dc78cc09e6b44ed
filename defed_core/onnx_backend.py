"""ONNX Runtime as the fast path's engine on a CPU (`backend = "onnxruntime"`, or `"auto"` on a CPU).

The folded networks of a `FastEnsemble` (classifier and K members) are exported into one ONNX
graph with a dynamic batch axis and run by ONNX Runtime's CPU provider. The graph computes
exactly what the torch fast path computes; scores and decisions stay in torch (they are cheap
and shared by every backend). On the development CPU it is the fastest path at every batch size
(docs/performance.md): it fuses each convolution with its activation, and `session.run` holds
no Python lock while it works, so a gateway's network and publisher threads run beside it.

The export takes a second or two (a TorchScript trace of the whole ensemble), which a hub pays
at every service start. With a `cache_dir` the graph is kept on disk under a key made of
everything it is computed from — the weights, the network code and the torch version — so a
restart reads it back in milliseconds and a changed bundle or upgrade can never meet a stale one.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from defed_core.ensemble import MemberOutputs

if TYPE_CHECKING:
    from defed_core.fast import FastEnsemble

log = logging.getLogger(__name__)

OUTPUTS = ("logits", "denoised", "denoised_logits")
OPSET = 17
# The modules whose code decides what the exported graph computes: a change to any of them
# changes the cache key.
GRAPH_SOURCES = ("fast.py", "denoiser.py", "classifiers.py", "filters.py", "onnx_backend.py")


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _TupleOutputs(nn.Module):
    """The ensemble's outputs as a tuple: what the exporter can name."""

    def __init__(self, ensemble: FastEnsemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.ensemble(x)
        return out.logits, out.denoised, out.denoised_logits


def export_graph(ensemble: FastEnsemble, input_shape: tuple[int, int, int]) -> bytes:
    """The ensemble as an ONNX model (bytes) taking float (N, C, H, W) for any N."""
    example = torch.rand(2, *input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter warns that it is legacy; it is the one that needs no
        # extra packages and exports these plain convolutional graphs exactly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TupleOutputs(ensemble).eval(),
            (example,),
            buffer,  # type: ignore[arg-type]  # a file object is accepted, the stub says path only
            dynamo=False,
            input_names=["x"],
            output_names=list(OUTPUTS),
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}, "denoised": {1: "n"}, "denoised_logits": {1: "n"}},
            opset_version=OPSET,
        )
    return buffer.getvalue()


def graph_key(networks: Iterable[nn.Module], input_shape: tuple[int, int, int]) -> str:
    """A digest of everything the exported graph is computed from."""
    digest = hashlib.sha256()
    digest.update(f"{torch.__version__} opset {OPSET} input {input_shape}\n".encode())
    here = Path(__file__).parent
    for name in GRAPH_SOURCES:
        digest.update((here / name).read_bytes())
    for network in networks:
        digest.update(repr(network).encode())  # the architecture, layer by layer
        for key, value in network.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_graph(
    key: str, cache_dir: Path | None, name: str, build: Callable[[], bytes], *, refresh: bool = False
) -> bytes:
    """The graph for `key`: read from `cache_dir` when it is there (unless `refresh`), else built
    and stored.

    The cache only saves time: an unreadable or unwritable cache is logged and the graph built.
    Older graphs of the same bundle name are removed when a new one is stored.
    """
    if cache_dir is None:
        return build()
    # The bundle's name comes from its bundle.json: only its plain characters reach a file name
    # (no separators, no glob patterns for the clean-up below).
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "bundle"
    path = cache_dir / f"{stem}-{key[:24]}.onnx"
    try:
        graph = b"" if refresh else path.read_bytes()
        if graph:
            return graph
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot read the cached ONNX graph %s (%s); exporting it again", path, exc)
    graph = build()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(graph)
        os.replace(tmp, path)  # atomic: a crash mid-write leaves no half graph under the key
        # Exactly "<stem>-<24 hex>.onnx": "mnist-*" would also take a bundle named "mnist-v2".
        for old in cache_dir.glob(f"{stem}-{'?' * 24}.onnx"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot store the ONNX graph in %s (%s); the next start exports it again", cache_dir, exc)
    return graph


def cached_ensemble(
    key: str, cache_dir: Path | None, name: str, build: Callable[[], bytes], threads: int
) -> OnnxEnsemble:
    """An ONNX Runtime session on the cached graph; a cached graph that does not load (a damaged
    file) is exported again and replaced, so that it cannot keep a restarted service down."""
    graph = cached_graph(key, cache_dir, name, build)
    try:
        return OnnxEnsemble(graph, threads)
    except Exception as exc:  # onnxruntime raises its own exception types for a bad model
        if cache_dir is None:
            raise
        log.warning("the cached ONNX graph of %s does not load (%s); exporting it again", name, exc)
    return OnnxEnsemble(cached_graph(key, cache_dir, name, build, refresh=True), threads)


# Workers take slices of a batch from a shared queue, one at a time. Small slices keep a member's
# feature maps in the core's cache (offline, 4–32 frames per slice ran alike, 128 ~10 % slower),
# and they balance the load: in a gateway, a worker that loses its core to the MQTT thread for a
# while simply takes fewer slices, instead of leaving the other worker waiting for its half.
SLICE_FRAMES = 8


def batch_slices(n: int, workers: int) -> list[slice]:
    """Contiguous slices of a batch of `n` frames: at least one per worker, none over SLICE_FRAMES."""
    parts = min(n, max(workers, -(-n // SLICE_FRAMES)))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


class OnnxEnsemble:
    """Callable like a FastEnsemble on CPU tensors: x (N, C, H, W) → MemberOutputs.

    The batch is split across `threads` workers, each running whole slices through a
    single-threaded session (ONNX Runtime allows concurrent `run` calls on one session). Frames
    are independent, so the outputs are identical to one run over the whole batch; what changes
    is that no worker waits for another between operators. ONNX Runtime's own intra-operator
    threads would meet at every one of the graph's ~170 operators, and on a small hub their
    wake-ups cost more than the work they share (docs/performance.md: a batch of 64 took 36.9 ms
    this way instead of 43.1 ms, a single frame 1.16 instead of 1.49 ms).
    """

    def __init__(self, graph: bytes, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        self.session: Any = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.threads = max(1, threads)
        # Created on the first batch that needs it: a bundle loaded for a single frame, or on one
        # thread, never starts a thread. Callers may run batches from several threads at once.
        self._workers: ThreadPoolExecutor | None = None
        self._workers_lock = threading.Lock()

    def set_threads(self, threads: int) -> None:
        """Run batches on `threads` workers from now on."""
        with self._workers_lock:
            if self._workers is not None and threads != self.threads:
                self._workers.shutdown(wait=True)
                self._workers = None
            self.threads = max(1, threads)

    def workers(self) -> ThreadPoolExecutor:
        with self._workers_lock:
            if self._workers is None:
                self._workers = ThreadPoolExecutor(self.threads, thread_name_prefix="defed-onnx")
            return self._workers

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self.session.run(list(OUTPUTS), {"x": x})
        return outputs

    def __call__(self, x: Tensor) -> MemberOutputs:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        slices = batch_slices(len(feed), self.threads)
        if len(slices) <= 1:
            logits, denoised, denoised_logits = self._run(feed)  # on the caller's thread
        else:
            parts = list(self.workers().map(self._run, (feed[s] for s in slices)))
            logits = np.concatenate([p[0] for p in parts])
            denoised = np.concatenate([p[1] for p in parts], axis=1)  # (K, N, C, H, W)
            denoised_logits = np.concatenate([p[2] for p in parts], axis=1)  # (K, N, classes)
        return MemberOutputs(torch.from_numpy(logits), torch.from_numpy(denoised), torch.from_numpy(denoised_logits))
