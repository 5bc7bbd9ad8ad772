"""The sparse tensor: a coordinate set of one level plus a (N, C) feature tensor."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nets.sparse.coords import CoordinateSet, KernelMapCache, select


@dataclass(frozen=True)
class SparseTensor:
    """Features (N, C) at the rows of a CoordinateSet. Immutable wrapper; any single thread."""

    features: torch.Tensor
    coords: CoordinateSet

    def __post_init__(self):
        if self.features.ndim != 2 or len(self.features) != len(self.coords):
            raise ValueError(f"features {tuple(self.features.shape)} do not match {len(self.coords)} sites")

    @classmethod
    def from_coords(cls, coords: torch.Tensor, features: torch.Tensor, stride: int = 1,
                    cache: KernelMapCache | None = None) -> "SparseTensor":
        """From unique (N,3) or (N,4) integer rows (batch first) in units of the stride."""
        return cls(features, CoordinateSet(coords.to(features.device), stride, cache))

    @property
    def coordinates(self) -> torch.Tensor:
        """(N,4) int32 rows (batch, x, y, z) in units of the stride."""
        return self.coords.coords

    @property
    def stride(self) -> int:
        return self.coords.stride

    def replace(self, features: torch.Tensor) -> "SparseTensor":
        """Same sites, new features."""
        return SparseTensor(features, self.coords)

    def __len__(self) -> int:
        return len(self.coords)


def prune(x: SparseTensor, keep: torch.Tensor) -> SparseTensor:
    """Keep the sites where keep (bool mask, or logits kept where > 0) is true; (N,) or (N,1)."""
    keep = keep.detach().reshape(-1)
    if keep.dtype != torch.bool:
        keep = keep > 0
    return SparseTensor(x.features[keep], select(x.coords, keep))
