"""A faster inference path for a loaded bundle, deciding exactly as the plain modules do.

Exact rewrites (up to float rounding):

1. **BatchNorm folded** into the convolution before it (eval mode only: running statistics are
   constants), removing a full pass over every feature map.
2. **All K denoisers as one network.** Every convolution of the K members becomes one grouped
   convolution (groups = K) over the members' channels side by side, so a batch runs through
   one wide network instead of K narrow ones: K× fewer kernel launches on a GPU, larger
   matrix products on a CPU. The fixed blur and edge filters are per channel already.
3. **One classifier call** on x and the K denoised batches together, instead of two.
4. **Fixed filters prepared once**: each blur/edge filter becomes a depthwise convolution whose
   per-channel kernel is built at load time (the plain module builds it on every call); this also
   gives the filter a static shape, which ONNX export needs.
5. **The first skip stack as one matrix** when that is cheaper: `skip1` is six convolutions with
   no activation between them, so it is one affine map of the whole image; for a small input
   (MNIST: 784 values) a 784×784 matrix product costs 12× fewer multiply-adds than the six
   convolutions, borders included (zero padding is part of the map).
6. **No transposed convolutions** (members run one by one, i.e. on a CPU): a stride-1 transposed
   3×3 convolution is the ordinary convolution with the kernel flipped and its in/out axes
   swapped; a stride-2 2×2 one (no overlap between output tiles) is a 1×1 convolution to four
   times the channels followed by a pixel shuffle. On a CPU both run on faster kernels than the
   transposed ones (docs/performance.md).
7. **Single-slope PReLUs as in-place leaky ReLUs** (members run one by one): the same function
   (x if x > 0 else a·x, with a read once at load), without PReLU's broadcast over a weight
   tensor and without allocating an output.

`FastEnsemble` computes the same `MemberOutputs` as `run_members`; `Bundle.load` builds it unless
`fast=False`, and `defed_core.onnx_backend` exports it for ONNX Runtime.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from defed_core.denoiser import EFEBlock, SkipStack
from defed_core.ensemble import MemberOutputs
from defed_core.filters import GaussianBlur, Laplacian, SobelMagnitude


def fold_batchnorm(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Conv2d | nn.ConvTranspose2d:
    """A copy of `conv` whose output equals bn(conv(x)) with bn's running statistics."""
    fused = copy.deepcopy(conv)
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (out,)
    shift = bn.bias.detach() - bn.running_mean * scale
    w = conv.weight.detach()
    if conv.groups != 1:
        raise ValueError("fold BatchNorm before grouping convolutions")
    # Conv2d weights are (out, in, kh, kw); transposed ones (in, out, kh, kw).
    out_axis = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    w = w * scale.view(out_axis)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    fused.weight = nn.Parameter(w)
    fused.bias = nn.Parameter(bias * scale + shift)
    return fused


def fold_all_batchnorms(module: nn.Module) -> nn.Module:
    """Fold every Sequential(conv, BatchNorm2d, …) pair in place; the BN becomes Identity."""
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        for i in range(len(child) - 1):
            conv, bn = child[i], child[i + 1]
            if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(bn, nn.BatchNorm2d):
                child[i] = fold_batchnorm(conv, bn)
                child[i + 1] = nn.Identity()
    return module


class PreparedFilter(nn.Module):
    """A fixed 3×3 filter (or the Sobel magnitude) for a known channel count, kernel built once."""

    weight: Tensor

    def __init__(self, kernel: Tensor, channels: int, border: str, magnitude_eps: float | None = None) -> None:
        super().__init__()
        k = kernel.reshape(-1, 1, 3, 3)  # (M, 1, 3, 3)
        self.register_buffer("weight", k.repeat(channels, 1, 1, 1).contiguous(), persistent=False)  # (C·M, 1, 3, 3)
        self.channels, self.border, self.magnitude_eps = channels, border, magnitude_eps

    def forward(self, x: Tensor) -> Tensor:
        out = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (1, 1, 1, 1), mode=self.border), self.weight, groups=self.channels
        )
        if self.magnitude_eps is None:
            return out
        n, _, h, w = out.shape
        grads = out.view(n, self.channels, 2, h, w)
        return torch.sqrt((grads * grads).sum(dim=2) + self.magnitude_eps)


def prepare_filters(module: nn.Module) -> nn.Module:
    """Replace every EFE block's blur and edge filter by a PreparedFilter, in place."""
    for block in module.modules():
        if not isinstance(block, EFEBlock) or not block.edge_features:
            continue
        first = block.orignConv[0]
        if not isinstance(first, nn.Conv2d | nn.ConvTranspose2d):
            raise TypeError(f"unexpected EFE branch {type(first).__name__}")
        channels = first.in_channels  # K·C once the members are grouped: the filters are per channel
        blur, edge = block.blur, block.edge
        if isinstance(blur, GaussianBlur):
            setattr(block, "blur", PreparedFilter(blur.kernel, channels, "reflect"))  # noqa: B010  # typed attr
        if isinstance(edge, Laplacian):
            setattr(block, "edge", PreparedFilter(edge.kernel, channels, "reflect"))  # noqa: B010
        elif isinstance(edge, SobelMagnitude):
            setattr(block, "edge", PreparedFilter(edge.kernel, channels, "replicate", edge.eps))  # noqa: B010
    return module


class PixelShuffleUp(nn.Module):
    """A stride-2 2×2 transposed convolution as a 1×1 convolution to 4× channels + pixel shuffle."""

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        cin, cout = conv.in_channels, conv.out_channels
        self.conv = nn.Conv2d(cin, cout * 4, 1)
        # Output channel o·4 + a·2 + b of the 1×1 conv lands at pixel (2i + a, 2j + b) of channel o.
        weight = conv.weight.detach().permute(1, 2, 3, 0).reshape(cout * 4, cin, 1, 1)
        self.conv.weight = nn.Parameter(weight.contiguous())
        self.conv.bias = nn.Parameter(bias_of(conv).repeat_interleave(4))

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.pixel_shuffle(self.conv(x), 2)


def bias_of(conv: nn.Conv2d | nn.ConvTranspose2d) -> Tensor:
    return conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)


def untranspose(conv: nn.ConvTranspose2d, strided: bool = True) -> nn.Module | None:
    """The ordinary-convolution form of a transposed convolution, or None where there is none here
    (or, with `strided=False`, where it would need a pixel shuffle)."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.output_padding != (0, 0) or isinstance(conv.padding, str):
        return None
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    if conv.stride == (1, 1) and ph < kh and pw < kw:
        out = nn.Conv2d(conv.in_channels, conv.out_channels, (kh, kw), padding=(kh - 1 - ph, kw - 1 - pw))
        out.weight = nn.Parameter(conv.weight.detach().transpose(0, 1).flip(-1, -2).contiguous())
        out.bias = nn.Parameter(bias_of(conv))
        return out
    if strided and conv.stride == (2, 2) and (kh, kw) == (2, 2) and (ph, pw) == (0, 0):
        return PixelShuffleUp(conv)
    return None


class ChannelSumConv(nn.Module):
    """A convolution to one channel (the MNIST tail, 16 → 1) as a per-channel convolution and a sum.

    conv(x) = Σ_c w[c] ⋆ x[c] + b: the per-channel convolution (groups = in_channels) computes
    every term, the sum adds them up. Same multiply-adds; ONNX Runtime runs a convolution to one
    channel at about a fifteenth of its usual rate, and per-channel ones fast (docs/performance.md). To
    three channels (the CIFAR-10 tail) the two forms measured alike, so it stays a convolution.
    """

    bias: Tensor

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if isinstance(conv.padding, str):
            raise ValueError("ChannelSumConv needs explicit padding")
        cin, (kh, kw), (ph, pw) = conv.in_channels, conv.kernel_size, conv.padding
        self.terms = nn.Conv2d(cin, cin, (kh, kw), padding=(ph, pw), groups=cin, bias=False)
        self.terms.weight = nn.Parameter(conv.weight.detach().reshape(cin, 1, kh, kw).clone())
        self.register_buffer("bias", bias_of(conv).view(1, 1, 1, 1).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        terms: Tensor = self.terms(x)  # (N, C, H, W): channel c is w[c] ⋆ x[c]
        return terms.sum(dim=1, keepdim=True) + self.bias


def channel_sum_convs(module: nn.Module) -> nn.Module:
    """Replace every plain stride-1 convolution to one channel (from several) by a ChannelSumConv."""
    for name, child in list(module.named_modules()):
        if not (
            type(child) is nn.Conv2d
            and child.groups == 1
            and child.out_channels == 1 < child.in_channels
            and child.stride == (1, 1)
            and not isinstance(child.padding, str)
            and child.dilation == (1, 1)
            and child.padding_mode == "zeros"
        ):
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, ChannelSumConv(child))
    return module


def prelus_as_leaky_relus(module: nn.Module) -> nn.Module:
    """Replace every single-slope PReLU by an in-place LeakyReLU with its slope, in place.

    In place is safe here: in the Defed network every PReLU reads a convolution's fresh output.
    """
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.PReLU) and child.num_parameters == 1:
            parent_name, _, attr = name.rpartition(".")
            slope = float(child.weight.detach())
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, nn.LeakyReLU(slope, True))
    return module


def untranspose_all(module: nn.Module, strided: bool = True) -> nn.Module:
    """Replace every transposed convolution that has an ordinary form by it, in place."""
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.ConvTranspose2d) or (replacement := untranspose(child, strided)) is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, replacement)
    return module


class AffineImageMap(nn.Module):
    """x + A·vec(x) + b: a SkipStack collapsed into one matrix product (it has no activation)."""

    matrix: Tensor
    bias: Tensor

    def __init__(self, stack: SkipStack, shape: tuple[int, int, int]) -> None:
        super().__init__()
        size = shape[0] * shape[1] * shape[2]
        # The map's rows are the stack applied to the basis images (the image of 0 is the bias).
        # Float32 rounding inside the convolutions leaves the matrix about 1e-5 (relative) off
        # the exact map — the plain modules carry the same order of error; a float64 build was
        # 15× slower at start-up for no change in any decision.
        with torch.no_grad():
            basis = torch.cat([torch.zeros(1, size), torch.eye(size)]).view(size + 1, *shape)
            images = torch.cat([stack.layers(basis[i : i + 128]).flatten(1) for i in range(0, size + 1, 128)])
            offset = images[:1]  # (1, D)
            columns = images[1:] - offset  # (D, D): row j = the linear part applied to e_j
        self.register_buffer("matrix", columns.contiguous(), persistent=False)  # (D, D): vec(x) @ matrix
        self.register_buffer("bias", offset.view(size).contiguous(), persistent=False)  # (D,)

    def forward(self, x: Tensor) -> Tensor:
        flat = torch.addmm(self.bias, x.flatten(1), self.matrix)  # (N, D)
        return x + flat.view_as(x)


def conv_macs(stack: SkipStack, shape: tuple[int, int, int]) -> int:
    """Multiply-adds of a SkipStack's convolutions on one image (3×3, stride 1: output = input size)."""
    pixels = shape[1] * shape[2]
    return sum(c.in_channels * c.out_channels * 9 * pixels for c in stack.layers if isinstance(c, nn.Conv2d))


def collapse_skip1(denoiser: nn.Module, shape: tuple[int, int, int]) -> nn.Module:
    """Replace the input skip stack by its matrix when the matrix product is cheaper, in place."""
    stack = getattr(denoiser, "skip1", None)
    size = shape[0] * shape[1] * shape[2]
    if isinstance(stack, SkipStack) and size * size < conv_macs(stack, shape) // 2:
        denoiser.skip1 = AffineImageMap(stack, shape)
    return denoiser


def group_conv(convs: list[nn.Module]) -> nn.Module:
    """K convolutions of one shape → one with groups = K over the members' channels side by side."""
    first = convs[0]
    if not isinstance(first, nn.Conv2d | nn.ConvTranspose2d) or first.groups != 1:
        raise ValueError(f"cannot group {type(first).__name__}")
    k = len(convs)
    # A copy keeps kernel size, stride and padding; only widths, groups and weights change.
    grouped = copy.deepcopy(first)
    grouped.in_channels, grouped.out_channels, grouped.groups = first.in_channels * k, first.out_channels * k, k
    # Conv2d weights (out, in, …) and ConvTranspose2d weights (in, out, …) both stack on axis 0.
    grouped.weight = nn.Parameter(torch.cat([c.get_parameter("weight").detach() for c in convs]))
    if first.bias is not None:
        grouped.bias = nn.Parameter(torch.cat([c.get_parameter("bias").detach() for c in convs]))
    return grouped


def group_prelu(prelus: list[nn.Module], channels: int) -> nn.PReLU:
    """K single-slope PReLUs → one per-channel PReLU over K·channels."""
    out = nn.PReLU(num_parameters=channels * len(prelus))
    out.weight = nn.Parameter(torch.cat([p.get_parameter("weight").detach().expand(channels) for p in prelus]))
    return out


def stack_denoisers(denoisers: Sequence[nn.Module]) -> nn.Module:
    """One network computing all K denoisers: input (N, K·C, H, W) → output (N, K·C, H, W)."""
    folded = [fold_all_batchnorms(copy.deepcopy(d)).eval() for d in denoisers]
    stacked = copy.deepcopy(folded[0])
    modules = [dict(d.named_modules()) for d in folded]
    last_channels = 0
    for name, module in list(stacked.named_modules()):
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            replacement: nn.Module = group_conv([m[name] for m in modules])
            last_channels = module.out_channels
        elif isinstance(module, nn.PReLU):
            # Every PReLU of the Defed network follows a conv (and its folded BN).
            replacement = group_prelu([m[name] for m in modules], last_channels)
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = stacked.get_submodule(parent_name) if parent_name else stacked
        setattr(parent, attr, replacement)
    return stacked.eval()


class FastEnsemble(nn.Module):
    """The networks of a bundle, rewritten for speed; same outputs as `run_members`.

    `group_members` runs the K denoisers as one grouped network. It pays on a GPU (fewer,
    wider kernels); on a CPU, oneDNN's grouped convolutions at these widths were slower than K
    plain ones (docs/performance.md), so there the members run one after another, folded.
    `engine` is what will run the rewritten networks: for `onnxruntime` (an exported graph) the
    stride-2 transposed convolutions stay as they are, which ONNX Runtime runs faster than a 1×1
    convolution and a pixel shuffle; for `torch` they become the latter.
    """

    def __init__(
        self,
        classifier: nn.Module,
        denoisers: Sequence[nn.Module],
        group_members: bool = True,
        input_shape: tuple[int, int, int] | None = None,
        engine: Literal["torch", "onnxruntime"] = "torch",
    ) -> None:
        super().__init__()
        self.k = len(denoisers)
        self.group_members = group_members
        self.classifier = fold_all_batchnorms(copy.deepcopy(classifier)).eval()
        self.stacked = prepare_filters(stack_denoisers(denoisers)) if group_members else None
        members = (
            []
            if group_members
            else [
                prelus_as_leaky_relus(
                    untranspose_all(prepare_filters(fold_all_batchnorms(copy.deepcopy(d))), strided=engine == "torch")
                )
                for d in denoisers
            ]
        )
        if input_shape is not None:
            members = [collapse_skip1(d, input_shape) for d in members]
        if engine == "onnxruntime":
            members = [channel_sum_convs(d) for d in members]
        # Members one by one run on oneDNN, whose kernels for these widths (16–32 channels, and
        # above all the per-channel blur/edge filters) are faster on channels-last feature maps.
        self.members = nn.ModuleList([d.eval().to(memory_format=torch.channels_last) for d in members])  # type: ignore[call-overload]  # the stubs omit memory_format

    def denoise(self, x: Tensor) -> Tensor:
        """All members' outputs: (K, N, C, H, W)."""
        if self.stacked is None:
            x = x.contiguous(memory_format=torch.channels_last)
            return torch.stack([d(x) for d in self.members])
        n, c, h, w = x.shape
        stacked: Tensor = self.stacked(x.repeat(1, self.k, 1, 1))  # (N, K·C, H, W)
        return stacked.view(n, self.k, c, h, w).transpose(0, 1)  # (K, N, C, H, W)

    def forward(self, x: Tensor) -> MemberOutputs:
        n, c, h, w = x.shape
        denoised = self.denoise(x)  # (K, N, C, H, W)
        logits = self.classifier(torch.cat([x, denoised.reshape(self.k * n, c, h, w)]))  # ((K+1)·N, classes)
        return MemberOutputs(logits[:n], denoised, logits[n:].view(self.k, n, -1))
