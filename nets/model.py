"""Owns the network: a sparse U-Net with a semantic head and coarse-to-fine completion (SG-NN style).

One forward pass over the observed sites of the nets' grid (5 cm cells) gives, at every output site:
semantic logits over the 20 ScanNet classes plus "empty", a signed distance to the surface (in cells)
and an occupancy logit. The decoder creates new sites beyond the observed ones (generative upsampling
with a 4-cell kernel, so each level may grow one coarse cell past the data) and prunes those whose
predicted occupancy is negative; observed sites are never pruned.

Levels: L0 = 1 cell, L1 = 2 cells, L2 = 4 cells. Coordinates are global cell indices, so strides line
up with the 32-cell chunks and a chunk predicted with a halo of `receptive_field_cells()` matches the
whole scene in its core. Modules are used by one thread at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from fusion.classes import CLASSES

from nets.sparse import (GenerativeConv3d, GenerativeUpsample3d, SparseBatchNorm, SparseReLU, SparseTensor, StridedConv3d,
                         SubmanifoldConv3d, prune)

EMPTY = len(CLASSES)      # the "empty" output follows the classes (ScanNet-20, ceiling)
N_CLASSES = EMPTY + 1


@dataclass(frozen=True)
class ModelConfig:
    """Architecture."""

    in_features: int = 7              #: features per input site (fusion.coarse.FEATURES)
    height_input: bool = False        #: the net also reads each site's height (z = 0: floor, gravity-aligned world)
    height_scale_cells: float = 40.0  #: height feature = (z + 0.5) / this (cells; 2 m at 5 cm)
    channels: tuple = (16, 32, 64)    #: feature channels at L0, L1, L2
    n_classes: int = N_CLASSES        #: semantic classes including "empty"
    grow_kernel: int = 3              #: generative conv at L2: sites grow by kernel//2 coarse cells
    occ_bias_init: float = -1.0       #: occupancy heads start by predicting "empty" (few generated sites)


def _subm(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(SubmanifoldConv3d(cin, cout, 3), SparseBatchNorm(cout), SparseReLU())


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(StridedConv3d(cin, cout, 2), SparseBatchNorm(cout), SparseReLU())


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(GenerativeUpsample3d(cin, cout, 2), SparseBatchNorm(cout), SparseReLU())


def _occ_head(channels: int, bias: float) -> nn.Linear:
    head = nn.Linear(channels, 1)
    nn.init.constant_(head.bias, bias)
    return head


def add_skip(x: SparseTensor, skip: SparseTensor) -> SparseTensor:
    """x + skip at the sites they share (skip's sites must all be in x)."""
    rows = x.coords.index().lookup(skip.coordinates.numpy() if x.coordinates.device.type == "cpu"
                                   else skip.coordinates)
    rows = torch.as_tensor(rows, dtype=torch.int64, device=x.features.device)
    if bool((rows < 0).any()):
        raise RuntimeError("skip connection has sites the upsampled level lacks")
    return x.replace(x.features.index_add(0, rows, skip.features))


def site_mask(x: SparseTensor, sites: SparseTensor) -> torch.Tensor:
    """(len(x),) bool: the site of x is one of `sites`."""
    mask = torch.zeros(len(x), dtype=torch.bool, device=x.features.device)
    rows = x.coords.index().lookup(sites.coordinates.numpy() if x.coordinates.device.type == "cpu"
                                   else sites.coordinates)
    mask[torch.as_tensor(rows, dtype=torch.int64, device=mask.device)] = True
    return mask


@dataclass
class ModelOutput:
    """Result of one forward pass. `levels` holds (sites, occupancy logits, kept) per generated level."""

    sites: SparseTensor          # L0 output sites (features unused)
    logits: torch.Tensor         # (N, n_classes)
    sdf_cells: torch.Tensor      # (N,) signed distance in cells
    occupancy: torch.Tensor      # (N,) logit
    observed: torch.Tensor       # (N,) bool: an input site
    levels: list


class SemanticCompletionNet(nn.Module):
    """Sparse U-Net, semantic + completion heads. One thread at a time."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        c0, c1, c2 = config.channels
        b = config.occ_bias_init
        self.enc0 = _subm(config.in_features + int(config.height_input), c0)
        self.down1, self.enc1 = _down(c0, c1), nn.Sequential(_subm(c1, c1), _subm(c1, c1))
        self.down2, self.enc2 = _down(c1, c2), nn.Sequential(_subm(c2, c2), _subm(c2, c2))
        self.grow2 = nn.Sequential(GenerativeConv3d(c2, c2, config.grow_kernel), SparseBatchNorm(c2), SparseReLU())
        self.occ2 = _occ_head(c2, b)
        self.gen1, self.occ1, self.dec1 = _up(c2, c1), _occ_head(c1, b), _subm(c1, c1)
        self.gen0, self.occ0, self.dec0 = _up(c1, c0), _occ_head(c0, b), _subm(c0, c0)
        self.sem = nn.Linear(c0, config.n_classes)
        self.sdf = nn.Linear(c0, 1)

    def forward(self, x: SparseTensor, keep_targets=None) -> ModelOutput:
        """keep_targets: optional callable(level, sites) -> bool mask of sites to keep regardless of
        the prediction (ground-truth occupancy during training)."""
        e0 = self.stem(x)
        e1 = self.enc1(self.down1(e0))
        e2 = self.enc2(self.down2(e1))
        levels = []
        d2 = self._grow(self.grow2(e2), e2, self.occ2, 2, keep_targets, levels)
        d1 = self.dec1(self._grow(self.gen1(d2), e1, self.occ1, 1, keep_targets, levels))
        d0 = self.dec0(self._grow(self.gen0(d1), e0, self.occ0, 0, keep_targets, levels))
        _, occ0, keep0 = levels[-1]
        return ModelOutput(d0, self.sem(d0.features), self.sdf(d0.features).squeeze(1), occ0[keep0],
                           site_mask(d0, x), levels)

    def stem(self, x: SparseTensor) -> SparseTensor:
        """The first layer on the input sites (with their height appended when the net reads it)."""
        if self.config.height_input:
            z = x.coordinates[:, 3:4].to(x.features.dtype)
            x = x.replace(torch.cat([x.features, (z + 0.5) / self.config.height_scale_cells], 1))
        return self.enc0(x)

    @staticmethod
    def _grow(g: SparseTensor, skip: SparseTensor, head: nn.Linear, level: int, keep_targets,
              levels: list) -> SparseTensor:
        """Add the encoder's skip, predict occupancy, prune; records (sites, logits, kept) in levels."""
        g = add_skip(g, skip)
        occ = head(g.features).squeeze(1)
        keep = (occ.detach() > 0) | site_mask(g, skip)
        if keep_targets is not None:
            keep |= keep_targets(level, g)
        levels.append((g, occ, keep))
        return prune(g, keep)


def with_height_input(net: SemanticCompletionNet) -> SemanticCompletionNet:
    """A copy of `net` that also reads height, computing exactly what `net` does until trained (the
    height channel's first-layer weights start at zero)."""
    if net.config.height_input:
        return net
    state = dict(net.state_dict())
    w = state["enc0.0.weight"]
    state["enc0.0.weight"] = torch.cat([w, torch.zeros_like(w[:, :1])], 1)
    wider = SemanticCompletionNet(replace(net.config, height_input=True))
    wider.load_state_dict(state)
    return wider


def receptive_field_cells(config: ModelConfig = ModelConfig()) -> int:
    """L0 cells on each side that can influence an output site: the halo chunks need.

    Encoder: enc0 1, down1 1, enc1 2x2, down2 2, enc2 2x4; decoder: grow2 (k//2)*4, gen1 3, dec1 2,
    gen0 1, dec0 1 (a child reaches back to its parent's whole cell)."""
    return 1 + 1 + 4 + 2 + 8 + (config.grow_kernel // 2) * 4 + 3 + 2 + 1 + 1
