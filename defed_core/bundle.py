"""A bundle: the protected classifier, the calibrated denoisers and their metadata, on disk.

A bundle is a directory holding `bundle.json` and one safetensors file per network. Loading
checks every file's SHA-256 against `bundle.json` and reads weights without unpickling
anything. The default bundles ship inside this package under `defed_core/bundles/`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from defed_core.calibration import Calibration
from defed_core.classifiers import ClassifierConfig, build_classifier
from defed_core.denoiser import Denoiser, DenoiserConfig
from defed_core.device import select_device
from defed_core.ensemble import Decision, MemberOutputs, decide, member_scores, run_members
from defed_core.fast import FastEnsemble
from defed_core.onnx_backend import OnnxEnsemble, cached_ensemble, export_graph, graph_key, onnxruntime_available

FORMAT_VERSION = 1
DEFAULT_BUNDLES = "bundles"


Backend = Literal["auto", "torch", "onnxruntime"]
Precision = Literal["fp32", "fp16", "bf16"]
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def use_onnxruntime(backend: Backend, device: torch.device, precision: Precision = "fp32") -> bool:
    """Whether the fast path runs on ONNX Runtime (see `Bundle.load`).

    `auto` takes ONNX Runtime on a CPU in float32 (the fastest path there, docs/performance.md)
    and torch everywhere else: on CUDA, and for half precision, which runs under torch's autocast.
    """
    if backend == "auto":
        return device.type == "cpu" and precision == "fp32" and onnxruntime_available()
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise BundleError(f"the onnxruntime backend runs on the CPU only, not on {device}")
        if not onnxruntime_available():
            raise BundleError("the onnxruntime backend needs onnxruntime and onnx: pip install onnxruntime onnx")
        return True
    return False


class BundleError(ValueError):
    """A bundle that is missing, malformed or tampered with."""


class InputError(ValueError):
    """Frames that do not fit the bundle (shape, dtype, range, NaN)."""


@dataclass(frozen=True)
class Member:
    """One ensemble member: its denoiser's configuration and training noise level."""

    sigma: float
    config: DenoiserConfig

    def to_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma, **self.config.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Member:
        return cls(float(d["sigma"]), DenoiserConfig.from_dict(d))


@dataclass(frozen=True)
class BundleSpec:
    """Everything in bundle.json except file digests."""

    name: str
    version: str
    input_shape: tuple[int, int, int]
    classes: list[str]
    classifier: ClassifierConfig
    members: list[Member]
    alpha: float
    calibration: Calibration
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_model_input(x: Tensor | np.ndarray, input_shape: tuple[int, int, int]) -> Tensor:
    """Frames as float (N, C, H, W) in [0, 1]; uint8 (N, H, W, C) is converted. Else InputError."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise InputError(f"frames must be a torch tensor or numpy array, got {type(x).__name__}")
    c, h, w = input_shape
    if x.dtype == torch.uint8:
        if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
            raise InputError(f"uint8 frames must have shape (N, {h}, {w}, {c}), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).float().div_(255.0)
    if not x.is_floating_point():
        raise InputError(f"frames must be uint8 (N, H, W, C) or float (N, C, H, W), got dtype {x.dtype}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
        raise InputError(f"float frames must have shape (N, {c}, {h}, {w}), got {tuple(x.shape)}")
    # One check for NaN and range together: a single host sync per batch, not per frame.
    if not bool(((x >= 0) & (x <= 1)).all()):
        raise InputError("float frames must be finite and within [0, 1] (NaN or out-of-range values found)")
    return x.float()


class Bundle:
    """A loaded, ready-to-run Defed ensemble (DESIGN §2)."""

    def __init__(
        self,
        spec: BundleSpec,
        classifier: nn.Module,
        denoisers: list[Denoiser],
        device: torch.device | str = "cpu",
        fast: bool = False,
        backend: Backend = "torch",
        precision: Precision = "fp32",
        cache_dir: Path | None = None,
    ) -> None:
        if len(denoisers) != len(spec.members) or len(spec.calibration.thresholds) != len(spec.members):
            raise BundleError("members, denoisers and thresholds differ in number")
        self.spec = spec
        self.device = torch.device(device)
        self.classifier = classifier.to(self.device).eval()
        self.denoisers = [d.to(self.device).eval() for d in denoisers]
        self.thresholds = torch.tensor(spec.calibration.thresholds, dtype=torch.float32, device=self.device)
        # The fast path (defed_core.fast) computes the same outputs; the plain modules stay
        # available as `classifier` and `denoisers` (e.g. for gradients in attacks).
        self.fast: FastEnsemble | OnnxEnsemble | None = None
        self.backend: str = "torch"
        self.precision: Precision = precision
        self.cache_dir = cache_dir
        if precision != "fp32" and (not fast or use_onnxruntime(backend, self.device, precision)):
            raise BundleError(f"precision {precision} needs the torch fast path (backend torch, fast=True)")
        if fast and use_onnxruntime(backend, self.device, precision):
            self.fast = cached_ensemble(
                graph_key([self.classifier, *self.denoisers], spec.input_shape),
                cache_dir,
                spec.name,
                lambda: export_graph(self.fast_ensemble(engine="onnxruntime"), spec.input_shape),
                torch.get_num_threads(),
            )
            self.backend = "onnxruntime"
        elif fast:
            self.fast = self.fast_ensemble()

    def fast_ensemble(self, engine: Literal["torch", "onnxruntime"] = "torch") -> FastEnsemble:
        """The fast path's networks for this bundle on its device, rewritten for `engine`."""
        return FastEnsemble(
            self.classifier,
            self.denoisers,
            group_members=self.device.type == "cuda",
            input_shape=self.spec.input_shape,
            engine=engine,
        ).to(self.device)

    def use_threads(self, threads: int) -> None:
        """Give the model `threads` CPU threads (process-wide: this sets torch's thread count).

        With the torch engines they are torch's intra-operator threads. With ONNX Runtime they are
        its workers (`OnnxEnsemble`), and torch gets one thread: it only prepares the frames and
        applies the rules to small tensors, and two of its OpenMP threads, spinning idle after each
        of those small operations, would take the cores from ONNX Runtime's workers
        (docs/performance.md: `predict` on 8 frames took 9.9 ms, the networks alone 4.4 ms).
        """
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if isinstance(self.fast, OnnxEnsemble):
            self.fast.set_threads(threads)
            torch.set_num_threads(1)
        else:
            torch.set_num_threads(threads)

    # --- metadata ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    @property
    def alpha(self) -> float:
        return self.spec.alpha

    # --- inference ---------------------------------------------------------------------

    def prepare(self, x: Tensor | np.ndarray) -> Tensor:
        """Validate frames and move them to the bundle's device as float (N, C, H, W).

        On a GPU, uint8 frames cross the bus as uint8 (a quarter of the bytes of float) from
        pinned memory, asynchronously, and become float on the device.
        """
        if self.device.type == "cuda" and isinstance(x, Tensor | np.ndarray) and x.dtype in (torch.uint8, np.uint8):
            frames = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
            ensure_model_input(frames[:0], self.input_shape)  # the shape check alone, on no data
            on_device = frames.pin_memory().to(self.device, non_blocking=True)
            return on_device.permute(0, 3, 1, 2).float().div_(255.0)
        return ensure_model_input(x, self.input_shape).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def outputs(self, x: Tensor) -> tuple[MemberOutputs, Tensor]:
        """Network outputs and scores (N, K) for prepared frames."""
        if self.fast is None:
            out = run_members(self.classifier, self.denoisers, x)
        elif self.precision == "fp32":
            out = self.fast(x)
        else:
            # Networks in half precision; scores and decisions in float32 from their outputs.
            with torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision]):
                half = self.fast(x)
            out = MemberOutputs(half.logits.float(), half.denoised.float(), half.denoised_logits.float())
        return out, member_scores(out, x, self.alpha)

    @torch.inference_mode()
    def scores(self, x: Tensor | np.ndarray) -> Tensor:
        """Member scores (N, K) on the bundle's device."""
        return self.outputs(self.prepare(x))[1]

    @torch.inference_mode()
    def predict(self, x: Tensor | np.ndarray) -> Decision:
        """Decide every frame of a batch; the Decision's tensors are on the CPU."""
        prepared = self.prepare(x)
        out, scores = self.outputs(prepared)
        return decide(out, scores, self.thresholds).to("cpu")

    def with_calibration(self, calibration: Calibration) -> Bundle:
        if len(calibration.thresholds) != len(self.spec.members):
            raise BundleError(
                f"calibration has {len(calibration.thresholds)} thresholds for {len(self.spec.members)} members"
            )
        # Thresholds are not part of the networks: the copy shares them and their fast path (no
        # second export or session; ONNX Runtime's workers stay as `use_threads` set them).
        recalibrated = copy.copy(self)
        recalibrated.spec = replace(self.spec, calibration=calibration)
        recalibrated.thresholds = torch.tensor(calibration.thresholds, dtype=torch.float32, device=self.device)
        return recalibrated

    # --- files -------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bundle directory (weights, then bundle.json with their digests)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        files = {"classifier.safetensors": self.classifier}
        files |= {f"member-{i}.safetensors": d for i, d in enumerate(self.denoisers)}
        digests = {}
        for name, module in files.items():
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(root / name))
            digests[name] = sha256_file(root / name)
        spec = self.spec
        doc = {
            "format": FORMAT_VERSION,
            "name": spec.name,
            "version": spec.version,
            "dataset": spec.dataset,
            "input_shape": list(spec.input_shape),
            "classes": spec.classes,
            "alpha": spec.alpha,
            "classifier": {
                **spec.classifier.to_dict(),
                "file": "classifier.safetensors",
                "sha256": digests["classifier.safetensors"],
            },
            "members": [
                {**m.to_dict(), "file": f"member-{i}.safetensors", "sha256": digests[f"member-{i}.safetensors"]}
                for i, m in enumerate(spec.members)
            ],
            "calibration": spec.calibration.to_dict(),
            "training": spec.training,
        }
        (root / "bundle.json").write_text(json.dumps(doc, indent=2) + "\n")
        return root

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        fast: bool = True,
        backend: Backend = "torch",
        precision: Precision = "fp32",
        cache_dir: str | Path | None = None,
    ) -> Bundle:
        """Load and verify a bundle directory; `fast=False` runs the plain modules instead.

        `backend` chooses the fast path's engine: `torch`, `onnxruntime` (CPU only; the fastest
        on the development CPU, docs/performance.md) or `auto` (ONNX Runtime on a CPU in fp32,
        torch elsewhere). `cache_dir` keeps ONNX Runtime's exported graph between loads.
        `use_threads` then hands the model its CPU threads.
        `precision` fp16/bf16 runs the torch fast path's networks under autocast (meant for
        GPUs; docs/performance.md gives its measured effect on scores).
        """
        root = Path(path)
        meta_path = root / "bundle.json"
        if not meta_path.is_file():
            raise BundleError(f"{root}: not a bundle (no bundle.json)")
        try:
            doc = json.loads(meta_path.read_text())
            if doc.get("format") != FORMAT_VERSION:
                raise BundleError(f"{meta_path}: unsupported bundle format {doc.get('format')!r}")
            spec = BundleSpec(
                name=doc["name"],
                version=doc["version"],
                input_shape=(int(doc["input_shape"][0]), int(doc["input_shape"][1]), int(doc["input_shape"][2])),
                classes=list(doc["classes"]),
                classifier=ClassifierConfig.from_dict(doc["classifier"]),
                members=[Member.from_dict(m) for m in doc["members"]],
                alpha=float(doc["alpha"]),
                calibration=Calibration.from_dict(doc["calibration"]),
                dataset=doc.get("dataset", {}),
                training=doc.get("training", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"{meta_path}: malformed bundle.json ({exc!r})") from exc
        classifier = build_classifier(spec.classifier)
        classifier.load_state_dict(read_weights(root, doc["classifier"]))
        denoisers = []
        for entry, member in zip(doc["members"], spec.members, strict=False):
            d = Denoiser(member.config)
            d.load_state_dict(read_weights(root, entry))
            denoisers.append(d)
        return cls(
            spec,
            classifier,
            denoisers,
            select_device(device),
            fast=fast,
            backend=backend,
            precision=precision,
            cache_dir=None if cache_dir is None else Path(cache_dir),
        )

    @classmethod
    def load_default(
        cls,
        name: str = "mnist",
        device: str = "auto",
        fast: bool = True,
        backend: Backend = "torch",
        precision: Precision = "fp32",
        cache_dir: str | Path | None = None,
    ) -> Bundle:
        """A bundle shipped inside the package, by name."""
        return cls.load(default_bundle_path(name), device, fast, backend, precision, cache_dir)


def shipped_bundles() -> list[str]:
    """Names of the bundles shipped inside the package."""
    base = Path(str(resources.files("defed_core") / DEFAULT_BUNDLES))
    return sorted(p.name for p in base.iterdir() if (p / "bundle.json").is_file()) if base.is_dir() else []


def default_bundle_path(name: str) -> Path:
    available = shipped_bundles()
    if name not in available:
        raise BundleError(f"no default bundle {name!r}; shipped: {', '.join(available) or 'none'}")
    return Path(str(resources.files("defed_core") / DEFAULT_BUNDLES)) / name


def resolve_bundle_path(ref: str | Path) -> Path:
    """A bundle directory from a path, or else from the name of a shipped bundle."""
    path = Path(ref)
    return path if path.is_dir() else default_bundle_path(str(ref))


def read_weights(root: Path, entry: dict[str, Any]) -> dict[str, Tensor]:
    """One weight file, after checking its SHA-256 against bundle.json."""
    path = root / entry["file"]
    if not path.is_file():
        raise BundleError(f"{path}: weight file missing")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"{path}: SHA-256 {actual[:16]}… does not match bundle.json ({entry['sha256'][:16]}…); "
            "refusing to load a modified weight file"
        )
    return load_file(str(path))
