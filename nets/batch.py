"""Owns turning samples into network batches: grid symmetries, colour jitter and dropout, and target lookup.

The symmetries are the 8 of the square about gravity (flips of x and y, and swapping them) acting on
whole cells (x -> -x-1), followed by a shift of whole cells. The shift is drawn below the coarsest
stride on every axis, so the floor of a training room (always in cell 0 of its sample) meets the nets'
pooling in every phase, as a real scan's floor does (it lies wherever the scan puts it). Targets are
looked up by undoing the symmetry and reading the sample's dense target box.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nets.data import IGNORE, Sample
from nets.model import EMPTY
from nets.sparse import SparseTensor

SURFACE_CELLS = 0.75      # |sdf| below this many cells: the ground-truth surface passes through the cell
OBSERVED_LABEL_CELLS = 2.0  # an observed site takes the closest surface's class within this distance


@dataclass(frozen=True)
class Symmetry:
    """One of the 8 symmetries of the square acting on cells: flip x, flip y, swap x and y, then
    shift by whole cells."""

    flip_x: bool = False
    flip_y: bool = False
    swap: bool = False
    shift: tuple = (0, 0, 0)

    def apply(self, c: np.ndarray) -> np.ndarray:
        c = np.array(c, np.int64, copy=True)
        if self.flip_x:
            c[:, 0] = -c[:, 0] - 1
        if self.flip_y:
            c[:, 1] = -c[:, 1] - 1
        if self.swap:
            c[:, [0, 1]] = c[:, [1, 0]]
        return c + np.asarray(self.shift, np.int64)

    def invert(self, c: np.ndarray) -> np.ndarray:
        c = np.array(c, np.int64, copy=True) - np.asarray(self.shift, np.int64)
        if self.swap:
            c[:, [0, 1]] = c[:, [1, 0]]
        return Symmetry(self.flip_x, self.flip_y, False).apply(c)

    @staticmethod
    def random(rng: np.random.Generator, max_shift: int = 1) -> "Symmetry":
        """A random symmetry, shifted by 0..max_shift-1 cells on each axis."""
        flips = (bool(b) for b in rng.integers(0, 2, 3))
        return Symmetry(*flips, tuple(int(v) for v in rng.integers(0, max_shift, 3)))


class BatchTargets:
    """Ground truth for the sites of one batch. Built and used by the training thread."""

    def __init__(self, samples: list[Sample], symmetries: list[Symmetry]):
        self.samples, self.symmetries = samples, symmetries

    def _read(self, coords4: np.ndarray, stride: int, field: str, fill):
        """Per row (batch, x, y, z at `stride`): the target box value (stride 1) or the values of all
        its L0 cells (N, stride^3)."""
        result = None
        for b, (s, sym) in enumerate(zip(self.samples, self.symmetries)):
            rows = np.nonzero(coords4[:, 0] == b)[0]
            if not len(rows):
                continue
            grid, c = getattr(s, field), coords4[rows, 1:]
            vals = self._lookup(grid, s.box_lo, sym.invert(c), fill) if stride == 1 else \
                self._lookup_children(grid, s.box_lo, sym, c, stride, fill)
            if result is None:
                result = np.full((len(coords4),) + vals.shape[1:], fill, vals.dtype)
            result[rows] = vals
        return result if result is not None else np.full(len(coords4), fill)

    @staticmethod
    def _lookup(grid: np.ndarray, lo: np.ndarray, cells: np.ndarray, fill) -> np.ndarray:
        rel = cells - lo
        inside = np.all((rel >= 0) & (rel < grid.shape), axis=1)
        vals = np.full(len(cells), fill, grid.dtype)
        vals[inside] = grid[tuple(rel[inside].T)]
        return vals

    def _lookup_children(self, grid, lo, sym: Symmetry, coarse: np.ndarray, stride: int, fill):
        """(N, stride^3) values of every L0 cell under each coarse site."""
        r = np.arange(stride)
        offs = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        fine = (coarse[:, None, :] * stride + offs[None]).reshape(-1, 3)
        return self._lookup(grid, lo, sym.invert(fine), fill).reshape(len(coarse), -1)

    def sdf_cells(self, coords4: np.ndarray) -> np.ndarray:
        return self._read(coords4, 1, "sdf_cells", np.float16(3.0)).astype(np.float32)

    def surface(self, coords4: np.ndarray, stride: int) -> np.ndarray:
        """Bool per site: the ground-truth surface passes through one of its L0 cells."""
        sdf = self._read(coords4, stride, "sdf_cells", np.float16(3.0)).astype(np.float32)
        near = np.abs(sdf) < SURFACE_CELLS
        return near if stride == 1 else near.any(axis=1)

    def semantic(self, coords4: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """Class index per L0 site: the closest surface's class near it, EMPTY away from it, IGNORE
        where the closest surface is none of the 20 classes."""
        sdf = np.abs(self.sdf_cells(coords4))
        label = self._read(coords4, 1, "label", np.uint8(IGNORE)).astype(np.int64)
        reach = np.where(observed, OBSERVED_LABEL_CELLS, SURFACE_CELLS)
        return np.where(sdf < reach, label, EMPTY)


def crop_rows(coords: np.ndarray, rng: np.random.Generator, crop_cells: int) -> np.ndarray:
    """Rows of the sites inside a random crop_cells x crop_cells column (all heights) around a site."""
    centre = coords[rng.integers(len(coords)), :2]
    return np.nonzero(np.all(np.abs(coords[:, :2] - centre) <= crop_cells // 2, axis=1))[0]


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of a batch."""

    colour_jitter: float = 0.1     #: per-sample colour gain and bias range (0..1 colour units)
    colour_dropout: float = 0.0    #: chance that a sample's colour is replaced by its mean (geometry decides)
    max_shift_cells: int = 1       #: whole-cell shifts are drawn below this (the coarsest stride: every phase)


def _augment_colour(f: np.ndarray, rng: np.random.Generator, aug: Augment) -> None:
    if aug.colour_jitter > 0:
        gain = rng.uniform(1 - aug.colour_jitter, 1 + aug.colour_jitter, 3)
        bias = rng.uniform(-aug.colour_jitter, aug.colour_jitter, 3) / 2
        f[:, 4:7] = np.clip((f[:, 4:7] + 0.5) * gain + bias, 0, 1) - 0.5
    if aug.colour_dropout > 0 and rng.random() < aug.colour_dropout:
        f[:, 4:7] = 0.0


def make_batch(samples: list[Sample], rng: np.random.Generator | None, aug: Augment = Augment(),
               crop_cells: int = 0):
    """(SparseTensor input, BatchTargets). rng None: no augmentation and no crop (validation)."""
    coords, feats, syms = [], [], []
    for b, s in enumerate(samples):
        sym = Symmetry.random(rng, aug.max_shift_cells) if rng is not None else Symmetry()
        rows = crop_rows(s.coords, rng, crop_cells) if rng is not None and crop_cells else slice(None)
        c = sym.apply(s.coords[rows])
        f = s.features[rows].copy()
        if rng is not None:
            _augment_colour(f, rng, aug)
        coords.append(np.column_stack([np.full(len(c), b), c]))
        feats.append(f)
        syms.append(sym)
    x = SparseTensor.from_coords(torch.from_numpy(np.concatenate(coords).astype(np.int32)),
                                 torch.from_numpy(np.concatenate(feats)))
    return x, BatchTargets(samples, syms)
