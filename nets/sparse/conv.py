"""Sparse convolution modules: submanifold, strided (down), transposed (up), generative upsampling and
generative (dilating) convolution."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nets.sparse import coords as C
from nets.sparse.functional import sparse_conv
from nets.sparse.tensor import SparseTensor


@dataclass(frozen=True)
class ConvConfig:
    """Settings of one sparse convolution layer."""

    in_channels: int  # input feature channels
    out_channels: int  # output feature channels
    kernel_size: int = 3  # voxels per side of the cubic kernel
    bias: bool = False  # add a learned per-channel bias


class _SparseConv(nn.Module):
    """Weights (K, Cin, Cout) with He (ReLU) uniform init, bias zero. Any single thread."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False):
        super().__init__()
        self.config = ConvConfig(in_channels, out_channels, kernel_size, bias)
        k3 = kernel_size ** 3
        self.weight = nn.Parameter(torch.empty(k3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.weight.shape[0] * self.weight.shape[1]
        bound = math.sqrt(6.0 / fan_in)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()

    def _apply_map(self, x: SparseTensor, kmap: C.KernelMap, out_coords: C.CoordinateSet) -> SparseTensor:
        return SparseTensor(sparse_conv(x.features, self.weight, kmap, self.bias), out_coords)

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.in_channels}, {c.out_channels}, kernel_size={c.kernel_size}, bias={c.bias}"


class SubmanifoldConv3d(_SparseConv):
    """Output sites = input sites; odd kernel centred on each site. Any single thread."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError("submanifold kernels must have odd size")
        super().__init__(in_channels, out_channels, kernel_size, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        kmap = C.submanifold_map(x.coords, self.config.kernel_size)
        return self._apply_map(x, kmap, x.coords)


class StridedConv3d(_SparseConv):
    """Stride-2 downsampling: output sites unique(floor(coords / 2)) at stride * 2. Any single thread."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        coarse = C.downsample(x.coords)
        kmap = C.strided_map(x.coords, coarse, self.config.kernel_size)
        return self._apply_map(x, kmap, coarse)


class TransposedConv3d(_SparseConv):
    """Stride-2 upsampling onto known finer sites (e.g. the encoder's set at that level). Any single thread."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, bias)

    def forward(self, x: SparseTensor, target: C.CoordinateSet | SparseTensor) -> SparseTensor:
        target = target.coords if isinstance(target, SparseTensor) else target
        if target.stride * 2 != x.stride:
            raise ValueError(f"target stride {target.stride} is not half of {x.stride}")
        kmap = C.transposed_map(x.coords, target, self.config.kernel_size)
        return self._apply_map(x, kmap, target)


class GenerativeUpsample3d(_SparseConv):
    """Stride-2 upsampling that creates every child site of each coarse site (for completion).

    With kernel 2 each coarse site spawns its 2x2x2 children; with kernel k the children are
    unique(2y + d - (k-1)//2) over the kernel. Prune the result with `prune`. Any single thread.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        fine = C.children(x.coords, self.config.kernel_size)
        kmap = C.transposed_map(x.coords, fine, self.config.kernel_size)
        return self._apply_map(x, kmap, fine)


class GenerativeConv3d(_SparseConv):
    """Same-level convolution whose output sites are the input's dilated by the odd kernel (every site
    within k//2 of an input site), for growing geometry at a coarse level. Any single thread."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError("generative convolution kernels must have odd size")
        super().__init__(in_channels, out_channels, kernel_size, bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = C.dilated(x.coords, self.config.kernel_size)
        kmap = C.dilation_map(x.coords, out, self.config.kernel_size)
        return self._apply_map(x, kmap, out)
