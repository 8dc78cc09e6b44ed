"""A faster inference path for a loaded bundle, deciding exactly as the plain modules do.

Three exact rewrites (up to float rounding):

1. **BatchNorm folded** into the convolution before it (eval mode only: running statistics are
   constants), removing a full pass over every feature map.
2. **All K denoisers as one network.** Every convolution of the K members becomes one grouped
   convolution (groups = K) over the members' channels side by side, so a batch runs through
   one wide network instead of K narrow ones: K× fewer kernel launches on a GPU, larger
   matrix products on a CPU. The fixed blur and edge filters are per channel already.
3. **One classifier call** on x and the K denoised batches together, instead of two.

`FastEnsemble(bundle)` exposes the same `outputs` as the bundle; `Bundle.predict` uses it when
`bundle.accelerate()` has been called.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from defed_core.ensemble import MemberOutputs


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
    """

    def __init__(self, classifier: nn.Module, denoisers: Sequence[nn.Module], group_members: bool = True) -> None:
        super().__init__()
        self.k = len(denoisers)
        self.group_members = group_members
        self.classifier = fold_all_batchnorms(copy.deepcopy(classifier)).eval()
        self.stacked = stack_denoisers(denoisers) if group_members else None
        self.members = nn.ModuleList(
            [] if group_members else [fold_all_batchnorms(copy.deepcopy(d)).eval() for d in denoisers]
        )

    def denoise(self, x: Tensor) -> Tensor:
        """All members' outputs: (K, N, C, H, W)."""
        if self.stacked is None:
            return torch.stack([d(x) for d in self.members])
        n, c, h, w = x.shape
        stacked: Tensor = self.stacked(x.repeat(1, self.k, 1, 1))  # (N, K·C, H, W)
        return stacked.view(n, self.k, c, h, w).transpose(0, 1)  # (K, N, C, H, W)

    def forward(self, x: Tensor) -> MemberOutputs:
        n, c, h, w = x.shape
        denoised = self.denoise(x)  # (K, N, C, H, W)
        logits = self.classifier(torch.cat([x, denoised.reshape(self.k * n, c, h, w)]))  # ((K+1)·N, classes)
        return MemberOutputs(logits[:n], denoised, logits[n:].view(self.k, n, -1))
