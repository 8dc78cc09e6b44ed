"""Importing the reference implementation's checkpoints.

The reference code is not available here, so this test writes state dicts in its key layout
(random weights, random BatchNorm statistics) and checks the imported networks against a
forward pass written directly from DESIGN §1 with torch.nn.functional — not with our modules.
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from defed_core.bundle import Bundle, BundleError
from defed_core.classifiers import LeNet5
from defed_core.denoiser import Denoiser, DenoiserConfig
from defed_core.reference import classifier_path, denoiser_path, import_denoiser
from defed_core.testing import write_random_mnist
from gateway.cli import main

# --- a forward pass from the design text -----------------------------------------------


def bn_prelu(s: dict[str, Tensor], p: str, h: Tensor) -> Tensor:
    h = F.batch_norm(
        h,
        s[f"{p}.1.running_mean"],
        s[f"{p}.1.running_var"],
        s[f"{p}.1.weight"],
        s[f"{p}.1.bias"],
        training=False,
        eps=1e-5,
    )
    return F.prelu(h, s[f"{p}.2.weight"])


def conv_seq(
    s: dict[str, Tensor], p: str, h: Tensor, *, transposed: bool = False, stride: int = 1, pad: int = 1
) -> Tensor:
    fn = F.conv_transpose2d if transposed else F.conv2d
    return bn_prelu(s, p, fn(h, s[f"{p}.0.weight"], s[f"{p}.0.bias"], stride=stride, padding=pad))


def fixed(h: Tensor, kernel: Tensor, mode: str) -> Tensor:
    c = h.shape[1]
    return F.conv2d(F.pad(h, (1, 1, 1, 1), mode=mode), kernel.expand(c, 1, 3, 3), groups=c)


def blur(h: Tensor) -> Tensor:
    g = torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5)])
    g = g / g.sum()
    return fixed(h, torch.outer(g, g)[None, None], "reflect")


def laplacian(h: Tensor) -> Tensor:
    k = torch.ones(3, 3)
    k[1, 1] = -8
    return fixed(h, k[None, None], "reflect")


def efe(s: dict[str, Tensor], p: str, h: Tensor, decoder: bool) -> Tensor:
    out = conv_seq(s, f"{p}.blurConv", blur(h), transposed=decoder)
    out = out + conv_seq(s, f"{p}.edgeConv", laplacian(h), transposed=decoder)
    out = out + conv_seq(s, f"{p}.orignConv", h, transposed=decoder)
    return F.conv2d(out, s[f"{p}.conv.weight"], s[f"{p}.conv.bias"])


def skip(s: dict[str, Tensor], p: str, h: Tensor, n: int) -> Tensor:
    out = h
    for i in range(n):
        out = F.conv2d(out, s[f"{p}.layers.{i}.weight"], s[f"{p}.layers.{i}.bias"], padding=1)
    return h + out


def design_forward(s: dict[str, Tensor], x: Tensor) -> Tensor:
    s1 = skip(s, "skip1", x, 6)
    h = conv_seq(s, "head", x)
    s2 = skip(s, "skip2", h, 4)
    h = conv_seq(s, "down1", efe(s, "en_efe_1", h, False), stride=2, pad=0)
    s3 = skip(s, "skip3", h, 2)
    h = conv_seq(s, "down2", efe(s, "en_efe_2", h, False), stride=2, pad=0)
    h = efe(s, "de_efe_2", conv_seq(s, "up2", h, transposed=True, stride=2, pad=0), True) + s3
    h = efe(s, "de_efe_1", conv_seq(s, "up1", h, transposed=True, stride=2, pad=0), True) + s2
    return (conv_seq(s, "tail", h, transposed=True) + s1).clamp(0, 1)


def random_reference_state(seed: int) -> dict[str, Tensor]:
    """A state dict in the reference key layout with every tensor randomised."""
    gen = torch.Generator().manual_seed(seed)
    keys = Denoiser(DenoiserConfig(1)).state_dict()
    state = {}
    for k, v in keys.items():
        if k.endswith("num_batches_tracked"):
            state[k] = v.clone()
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=gen) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=gen) * (0.3 if v.ndim > 1 else 0.1)
    return state


@pytest.fixture()
def reference_dir(tmp_path: Path) -> Path:
    root = tmp_path / "reference"
    cpath = classifier_path(root, "mnist")
    cpath.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(LeNet5().state_dict(), cpath)
    for i, sigma in enumerate((20, 40)):
        dpath = denoiser_path(root, "mnist", "laplacian", sigma)
        dpath.parent.mkdir(parents=True, exist_ok=True)
        # DataParallel checkpoints carry a "module." prefix; the importer strips it.
        torch.save({f"module.{k}": v for k, v in random_reference_state(i).items()}, dpath)
    return root


class TestImportDenoiser:
    def test_matches_the_design_forward_pass(self, reference_dir: Path) -> None:
        """Imported weights reproduce the forward pass of DESIGN §1 to 1e-5."""
        state = random_reference_state(0)
        model = import_denoiser(reference_dir, "mnist", "laplacian", 20)
        x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            diff = (model(x) - design_forward(state, x)).abs().max().item()
        assert diff <= 1e-5

    def test_missing_keys_refused(self, tmp_path: Path) -> None:
        path = denoiser_path(tmp_path, "mnist", "laplacian", 20)
        path.parent.mkdir(parents=True)
        state = random_reference_state(0)
        del state["head.0.weight"]
        torch.save(state, path)
        with pytest.raises(BundleError, match=r"missing \['head\.0\.weight'\]"):
            import_denoiser(tmp_path, "mnist", "laplacian", 20)


def test_cli_builds_a_calibrated_bundle(reference_dir: Path, tmp_path: Path) -> None:
    """`defed import-reference` writes a bundle calibrated on a held-out split of the data."""
    data = write_random_mnist(tmp_path / "tiny.npz", train=300, test=20)
    out = tmp_path / "imported"
    code = main(
        [
            "import-reference",
            "--reference-dir",
            str(reference_dir),
            "--sigmas",
            "20,40",
            "--data",
            str(data),
            "--out",
            str(out),
            "--validation-size",
            "100",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    bundle = Bundle.load(out, device="cpu")
    assert [m.sigma for m in bundle.spec.members] == [20.0, 40.0]
    assert bundle.spec.calibration.images == 100 and bundle.spec.calibration.origin["seed"] == 0
    state = random_reference_state(1)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert (bundle.denoisers[1](x) - design_forward(state, x)).abs().max() <= 1e-5


def test_cli_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "import-reference",
            "--reference-dir",
            str(tmp_path),
            "--sigmas",
            "20",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "reference checkpoint not found" in err
