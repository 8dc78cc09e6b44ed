"""The fixed filters against values computed by hand."""

import math

import pytest
import torch

from defed_core.filters import GaussianBlur, Laplacian, SobelMagnitude, edge_operator, gaussian_kernel


class TestGaussianBlur:
    def test_kernel_is_normalised_gaussian_with_sigma_one(self) -> None:
        """The 1-D weights are e^{-1/2}, 1, e^{-1/2} normalised; the kernel sums to one."""
        a = math.exp(-0.5)
        g = torch.tensor([a, 1.0, a]) / (1 + 2 * a)
        assert torch.allclose(gaussian_kernel(1.0), torch.outer(g, g))
        assert gaussian_kernel().sum().item() == pytest.approx(1.0)

    def test_constant_image_is_unchanged(self) -> None:
        """Blurring a constant image (reflect border) changes nothing."""
        x = torch.full((1, 2, 8, 8), 0.7)
        assert torch.allclose(GaussianBlur()(x), x)

    def test_impulse_response_is_the_kernel(self) -> None:
        """A single bright pixel away from the border spreads into the kernel itself."""
        x = torch.zeros(1, 1, 7, 7)
        x[0, 0, 3, 3] = 1.0
        assert torch.allclose(GaussianBlur()(x)[0, 0, 2:5, 2:5], gaussian_kernel())


class TestLaplacian:
    def test_impulse_gives_minus_eight_centre_and_ones_around(self) -> None:
        """The unnormalised kernel: −8 at the centre, 1 at the eight neighbours."""
        x = torch.zeros(1, 1, 5, 5)
        x[0, 0, 2, 2] = 1.0
        y = Laplacian()(x)[0, 0]
        expected = torch.ones(3, 3)
        expected[1, 1] = -8
        assert torch.equal(y[1:4, 1:4], expected)

    def test_reflect_border(self) -> None:
        """At a corner the reflect border mirrors the inner pixels (not zeros, not copies of the edge)."""
        x = torch.zeros(1, 1, 4, 4)
        x[0, 0, 1, 1] = 1.0
        # The corner pixel's 3×3 neighbourhood under reflect padding holds x[1,1] four times.
        assert Laplacian()(x)[0, 0, 0, 0].item() == 4.0

    def test_channels_are_filtered_separately(self) -> None:
        """Each channel sees only itself."""
        x = torch.zeros(1, 3, 5, 5)
        x[0, 1, 2, 2] = 1.0
        y = Laplacian()(x)
        assert y[0, 0].abs().sum() == 0 and y[0, 2].abs().sum() == 0 and y[0, 1, 2, 2] == -8


class TestSobel:
    def test_horizontal_ramp(self) -> None:
        """On a ramp rising by 1 per column, gx = 8 inside and gy = 0, so the magnitude is √(64+eps)."""
        x = torch.arange(6.0).repeat(6, 1)[None, None]
        y = SobelMagnitude()(x)[0, 0, 1:-1, 1:-1]
        assert torch.allclose(y, torch.full_like(y, math.sqrt(64 + 1e-6)))

    def test_flat_image_gives_sqrt_eps(self) -> None:
        y = SobelMagnitude()(torch.ones(1, 1, 4, 4))
        assert torch.allclose(y, torch.full_like(y, math.sqrt(1e-6)))


def test_unknown_edge_operator_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown edge operator"):
        edge_operator("canny")  # type: ignore[arg-type]
