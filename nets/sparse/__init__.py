"""Sparse-convolution engine: sparse tensors, cached kernel maps, gather-matmul-scatter conv layers."""
from nets.sparse.conv import (ConvConfig, GenerativeConv3d, GenerativeUpsample3d, StridedConv3d, SubmanifoldConv3d,
                              TransposedConv3d)
from nets.sparse.coords import CoordinateSet, KernelMap, KernelMapCache
from nets.sparse.functional import SparseConvFunction, sparse_conv
from nets.sparse.hashmap import NumbaCoordHash, SortedCoordIndex
from nets.sparse.norm import FeatureWise, SparseBatchNorm, SparseELU, SparseLeakyReLU, SparseReLU
from nets.sparse.tensor import SparseTensor, prune

__all__ = [
    "ConvConfig", "CoordinateSet", "FeatureWise", "GenerativeConv3d", "GenerativeUpsample3d", "KernelMap", "KernelMapCache",
    "NumbaCoordHash", "SortedCoordIndex", "SparseBatchNorm", "SparseConvFunction", "SparseELU",
    "SparseLeakyReLU", "SparseReLU", "SparseTensor", "StridedConv3d", "SubmanifoldConv3d",
    "TransposedConv3d", "prune", "sparse_conv",
]
