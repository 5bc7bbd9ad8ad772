"""Feature-only layers on sparse tensors: batch norm, activations, any per-site module."""
from __future__ import annotations

from torch import nn

from nets.sparse.tensor import SparseTensor


class FeatureWise(nn.Module):
    """Applies a module to the (N, C) features, keeping the sites. Any single thread."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.module(x.features))


class SparseBatchNorm(FeatureWise):
    """BatchNorm1d over all active sites of the batch. Any single thread."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(nn.BatchNorm1d(channels, eps=eps, momentum=momentum))


class SparseReLU(FeatureWise):
    """ReLU on features. Any single thread."""

    def __init__(self, inplace: bool = False):
        super().__init__(nn.ReLU(inplace=inplace))


class SparseLeakyReLU(FeatureWise):
    """LeakyReLU on features. Any single thread."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(nn.LeakyReLU(negative_slope))


class SparseELU(FeatureWise):
    """ELU on features. Any single thread."""

    def __init__(self, alpha: float = 1.0):
        super().__init__(nn.ELU(alpha))
