"""The fast inference path decides exactly as the plain modules."""

import copy
from pathlib import Path

import pytest
import torch

from defed_core.attacks import AttackSpec, successful_adversarials
from defed_core.bundle import Bundle, BundleError
from defed_core.data import load_sample, to_tensor
from defed_core.denoiser import Denoiser, DenoiserConfig
from defed_core.ensemble import run_members
from defed_core.fast import AffineImageMap, FastEnsemble, PixelShuffleUp, fold_batchnorm, untranspose
from defed_core.onnx_backend import OnnxEnsemble
from defed_core.testing import untrained_bundle


def randomise_normalisation(bundle: Bundle, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and PReLU slopes, so folding and grouping are really tested."""
    g = torch.Generator().manual_seed(seed)
    for model in [bundle.classifier, *bundle.denoisers]:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.data.normal_(1, 0.2, generator=g)
                m.bias.data.normal_(0, 0.2, generator=g)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.data.uniform_(0, 0.5, generator=g)


@pytest.mark.parametrize(
    ("shape", "sigmas"), [((1, 28, 28), (20.0, 40.0)), ((1, 28, 28), (10.0, 20.0, 30.0)), ((3, 32, 32), (8.0, 16.0))]
)
def test_same_outputs_as_plain_modules(shape: tuple[int, int, int], sigmas: tuple[float, ...]) -> None:
    """Logits, denoised images and scores agree to 1e-5 (float rounding only)."""
    bundle = untrained_bundle(input_shape=shape, sigmas=sigmas)
    randomise_normalisation(bundle)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(1))
    for grouped in (True, False):
        fast = FastEnsemble(bundle.classifier, bundle.denoisers, group_members=grouped)
        with torch.inference_mode():
            plain, quick = run_members(bundle.classifier, bundle.denoisers, x), fast(x)
        for name in ("logits", "denoised", "denoised_logits"):
            assert (getattr(plain, name) - getattr(quick, name)).abs().max() <= 1e-5, (name, grouped)


def test_bundle_fast_and_plain_decide_alike(tmp_path: torch.Tensor) -> None:
    untrained_bundle(tmp_path / "b")  # type: ignore[operator]
    fast, plain = Bundle.load(tmp_path / "b", "cpu"), Bundle.load(tmp_path / "b", "cpu", fast=False)  # type: ignore[operator]
    assert fast.fast is not None and plain.fast is None
    x = torch.rand(16, 1, 28, 28)
    a, b = fast.predict(x), plain.predict(x)
    assert (a.scores - b.scores).abs().max() <= 1e-5 and torch.equal(a.label, b.label)


def test_folded_transposed_convolution() -> None:
    conv, bn = torch.nn.ConvTranspose2d(4, 6, 2, stride=2), torch.nn.BatchNorm2d(6).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 4, 5, 5)
    assert torch.allclose(bn(conv(x)), fold_batchnorm(conv, bn)(x), atol=1e-6)


@pytest.mark.parametrize(
    ("channels", "kernel", "stride", "padding", "expected"),
    [(16, 3, 1, 1, torch.nn.Conv2d), (32, 2, 2, 0, PixelShuffleUp), (3, 3, 1, 0, torch.nn.Conv2d)],
)
def test_transposed_convolution_rewritten_as_an_ordinary_one(
    channels: int, kernel: int, stride: int, padding: int, expected: type
) -> None:
    """Rewrite 6: the decoder's transposed convolutions (and a padding-free one) keep their outputs."""
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(channels, 5, kernel, stride=stride, padding=padding).eval()
    rewritten = untranspose(conv)
    assert isinstance(rewritten, expected)
    x = torch.randn(3, channels, 7, 6)
    with torch.no_grad():
        assert torch.allclose(rewritten(x), conv(x), atol=1e-5)


def test_transposed_convolution_without_an_ordinary_form_is_kept() -> None:
    assert untranspose(torch.nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)) is None


@pytest.mark.parametrize("edge", ["laplacian", "sobel"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_prepared_filters_and_collapsed_skip_match_plain_denoiser(edge: str, shape: tuple[int, int, int]) -> None:
    """Rewrites 4 and 5 (prepared filters; skip1 as one matrix where cheaper) keep the outputs."""
    torch.manual_seed(0)
    bundle = untrained_bundle(input_shape=shape)
    denoisers = [Denoiser(DenoiserConfig(shape[0], edge, "defed")).eval() for _ in range(2)]  # type: ignore[arg-type]
    bundle.denoisers = denoisers
    randomise_normalisation(bundle)
    fast = FastEnsemble(bundle.classifier, denoisers, group_members=False, input_shape=shape)
    collapsed = [isinstance(getattr(d, "skip1", None), AffineImageMap) for d in fast.members]
    assert collapsed == [shape == (1, 28, 28)] * 2  # a matrix only where it is cheaper than the convolutions
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        plain, quick = run_members(bundle.classifier, denoisers, x), fast(x)
    for name in ("logits", "denoised", "denoised_logits"):
        assert (getattr(plain, name) - getattr(quick, name)).abs().max() <= 1e-4, name


def test_affine_image_map_is_the_skip_stack() -> None:
    """The matrix form includes the zero-padded borders: compare on images bright at the edges."""
    torch.manual_seed(0)
    stack = Denoiser(DenoiserConfig(1, "laplacian", "defed")).skip1
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 0, :] = x[:, :, :, -1] = 1.0  # borders only
    x[2] = torch.rand(1, 28, 28)
    with torch.no_grad():
        exact = copy.deepcopy(stack).double()(x.double())
        plain_error = (stack(x) - exact).abs().max()
        map_error = (AffineImageMap(stack, (1, 28, 28))(x) - exact).abs().max()
    assert map_error <= max(10 * plain_error, 1e-5)  # float32 rounding, of the plain convolutions' order


@pytest.mark.parametrize(("name", "epsilon"), [("mnist", 0.3), ("cifar10", 8 / 255)])
def test_onnxruntime_backend_scores_match_plain_modules(name: str, epsilon: float) -> None:
    """The shipped bundles: ONNX Runtime fast path (on 2 workers: batches split into slices) and
    torch fast path vs plain eager modules, max |Δscore| ≤ 1e-4 and the same decisions."""
    onnx = Bundle.load_default(name, "cpu", backend="onnxruntime")
    onnx.use_threads(2)  # torch's thread count is put back after the test (tests/core/conftest.py)
    torch_fast = Bundle.load_default(name, "cpu", backend="torch")
    plain = Bundle.load_default(name, "cpu", fast=False)
    assert onnx.backend == "onnxruntime" and isinstance(onnx.fast, OnnxEnsemble)
    assert torch_fast.backend == "torch" and isinstance(torch_fast.fast, FastEnsemble)
    sample = load_sample(name).head(64)
    benign = to_tensor(sample.images)
    attacked, _, _ = successful_adversarials(
        plain.classifier, benign, torch.from_numpy(sample.labels), AttackSpec("fgsm", epsilon)
    )
    assert len(attacked) > 10
    for x in (benign, attacked):
        reference = plain.predict(x)
        for candidate in (onnx, torch_fast):
            got = candidate.predict(x)
            assert (got.scores - reference.scores).abs().max() <= 1e-4
            assert torch.equal(got.adversarial, reference.adversarial) and torch.equal(got.label, reference.label)
    assert onnx.predict(benign[:1]).scores.shape == (1, len(onnx.spec.members))  # any batch size


def test_half_precision_runs_the_torch_fast_path_and_keeps_float32_scores(bundle_dir: Path) -> None:
    full = Bundle.load(bundle_dir, "cpu", backend="torch")
    half = Bundle.load(bundle_dir, "cpu", backend="torch", precision="bf16")
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    a, b = full.predict(x), half.predict(x)
    assert b.scores.dtype == torch.float32 and b.scores.shape == a.scores.shape
    assert ((b.scores - a.scores).abs() / a.scores.abs()).max() < 0.2  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("options", [{"fast": False}, {"backend": "onnxruntime"}])
def test_half_precision_needs_the_torch_fast_path(bundle_dir: Path, options: dict[str, object]) -> None:
    with pytest.raises(BundleError, match="precision fp16 needs the torch fast path"):
        Bundle.load(bundle_dir, "cpu", precision="fp16", **options)  # type: ignore[arg-type]
