"""The fast inference path decides exactly as the plain modules."""

import pytest
import torch

from defed_core.bundle import Bundle
from defed_core.ensemble import run_members
from defed_core.fast import FastEnsemble, fold_batchnorm
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
