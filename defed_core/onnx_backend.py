"""ONNX Runtime as an optional engine for the fast path on a CPU (`model.backend = "onnxruntime"`).

The folded networks of a `FastEnsemble` (classifier and K members) are exported once, at load,
into one ONNX graph with a dynamic batch axis, and run by ONNX Runtime's CPU provider. The graph
computes exactly what the torch fast path computes; scores and decisions stay in torch (they are
cheap and shared by every backend). Measured side by side on the development CPU
(docs/performance.md) it was slightly faster than the torch fast path at batch 1 and slower from
batch 8 up, so torch is the default and this engine is an option (the `onnx` extra) for CPUs
where it measures better.

Export takes well under a second per bundle and needs no file: the graph is built in memory, so
a hub restarting the service pays it once per start-up, and nothing can go stale.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from defed_core.ensemble import MemberOutputs

if TYPE_CHECKING:
    from defed_core.fast import FastEnsemble

OUTPUTS = ("logits", "denoised", "denoised_logits")


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
            opset_version=17,
        )
    return buffer.getvalue()


class OnnxEnsemble:
    """Callable like a FastEnsemble on CPU tensors: x (N, C, H, W) → MemberOutputs."""

    def __init__(self, ensemble: FastEnsemble, input_shape: tuple[int, int, int], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        # Idle worker threads sleep instead of spinning between batches: on a small hub the
        # gateway's MQTT, decoding and audit threads need those cores while the model waits.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session: Any = ort.InferenceSession(
            export_graph(ensemble, input_shape), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: Tensor) -> MemberOutputs:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        logits, denoised, denoised_logits = self.session.run(list(OUTPUTS), {"x": feed})
        return MemberOutputs(torch.from_numpy(logits), torch.from_numpy(denoised), torch.from_numpy(denoised_logits))
