"""Shapes and structure of the denoiser and the classifiers."""

import pytest
import torch

from defed_core.classifiers import ClassifierConfig, LeNet5, VGGNet, build_classifier
from defed_core.denoiser import Denoiser, DenoiserConfig, count_parameters


class TestDenoiser:
    @pytest.mark.parametrize("channels", [1, 3])
    @pytest.mark.parametrize("edge", ["laplacian", "sobel"])
    @pytest.mark.parametrize("architecture", ["defed", "basenet"])
    @pytest.mark.parametrize("size", [(28, 28), (32, 32), (16, 40)])
    def test_output_has_input_shape_and_range(
        self, channels: int, edge: str, architecture: str, size: tuple[int, int]
    ) -> None:
        """Any H, W divisible by 4, 1 or 3 channels: output shape = input shape, values in [0, 1]."""
        model = Denoiser(DenoiserConfig(channels, edge, architecture)).eval()  # type: ignore[arg-type]
        x = torch.rand(2, channels, *size)
        y = model(x)
        assert y.shape == x.shape
        assert y.min() >= 0 and y.max() <= 1

    def test_size_not_divisible_by_four_is_refused(self) -> None:
        with pytest.raises(ValueError, match="divisible by 4"):
            Denoiser(DenoiserConfig())(torch.rand(1, 1, 30, 30))

    def test_parameter_count_matches_the_paper(self) -> None:
        """About 0.12 M parameters for one channel."""
        assert 110_000 < count_parameters(Denoiser(DenoiserConfig(1))) < 130_000

    def test_basenet_has_no_edge_branches_or_skips(self) -> None:
        keys = Denoiser(DenoiserConfig(1, architecture="basenet")).state_dict().keys()
        assert not any(k.startswith(("skip",)) or "blurConv" in k or "edgeConv" in k for k in keys)
        assert any("orignConv" in k for k in keys)

    def test_reference_key_layout(self) -> None:
        """The state dict uses the reference implementation's key names."""
        keys = set(Denoiser(DenoiserConfig(1)).state_dict())
        for key in [
            "skip1.layers.0.weight",
            "head.0.weight",
            "head.1.running_mean",
            "head.2.weight",
            "skip2.layers.3.bias",
            "en_efe_1.blurConv.0.weight",
            "en_efe_1.edgeConv.1.running_var",
            "en_efe_1.orignConv.2.weight",
            "en_efe_1.conv.weight",
            "down1.0.weight",
            "skip3.layers.1.weight",
            "up2.0.weight",
            "tail.0.weight",
        ]:
            assert key in keys
        assert Denoiser(DenoiserConfig(1)).state_dict()["de_efe_2.blurConv.0.weight"].shape == (32, 32, 3, 3)


class TestClassifiers:
    def test_lenet_shapes(self) -> None:
        assert LeNet5()(torch.rand(3, 1, 28, 28)).shape == (3, 10)
        assert LeNet5().fc1.in_features == 256

    def test_vgg_shapes(self) -> None:
        model = VGGNet(3, 10)
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        widths = [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)]
        assert widths == [16, 32, 64, 64, 128, 128, 128, 128]

    def test_lenet_refuses_colour(self) -> None:
        with pytest.raises(ValueError, match="1-channel"):
            build_classifier(ClassifierConfig("lenet5", 3, 10))
