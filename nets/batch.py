"""Owns turning samples into network batches: grid symmetries, tilt, partial scans, noise, colour jitter and
dropout, and target lookup.

The symmetries are the 8 of the square about gravity (flips of x and y, and swapping them) acting on
whole cells (x -> -x-1), after an optional small tilt of gravity (a rotation about a floor-level pivot,
sites re-gridded to the nearest cell), followed by a shift of whole cells. The shift is drawn below the
coarsest stride on every axis, so the floor of a training room (always in cell 0 of its sample) meets
the nets' pooling in every phase, as a real scan's floor does (it lies wherever the scan puts it); its
height is off by up to a cell or two either way, as a real scan's estimated floor is. Colour can be
repainted per class, so that no class is known by its colour alone. Real scans also
stop part of the way up the walls, have holes and noisier surfaces: the batch drops sites above a cut
height and inside random holes, and perturbs the signed-distance features. Targets are looked up by
undoing the symmetry and reading the sample's dense target box.
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


def _tilt_matrix(tilt_rad: tuple) -> np.ndarray:
    ax, ay = tilt_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return rx @ ry


@dataclass(frozen=True)
class Symmetry:
    """Tilt gravity by `tilt_rad` (about x, then y) around the cell `pivot`, then one of the 8 symmetries
    of the square acting on cells (flip x, flip y, swap x and y), then shift by whole cells."""

    flip_x: bool = False
    flip_y: bool = False
    swap: bool = False
    shift: tuple = (0, 0, 0)
    tilt_rad: tuple = (0.0, 0.0)
    pivot: tuple = (0, 0, 0)

    def _tilt(self, c: np.ndarray, inverse: bool) -> np.ndarray:
        if not any(self.tilt_rad):
            return c
        R = _tilt_matrix(self.tilt_rad)
        p = np.asarray(self.pivot, np.float64)
        moved = (c + 0.5 - p) @ (R if inverse else R.T) + p - 0.5
        return np.rint(moved).astype(np.int64)

    def apply(self, c: np.ndarray) -> np.ndarray:
        c = self._tilt(np.array(c, np.int64, copy=True), inverse=False)
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
        return self._tilt(Symmetry(self.flip_x, self.flip_y, False).apply(c), inverse=True)

    @staticmethod
    def random(rng: np.random.Generator, max_shift: int = 1, z_shift_offset: int = 0, max_tilt_deg: float = 0.0,
               pivot: tuple = (0, 0, 0)) -> "Symmetry":
        """A random symmetry, shifted by 0..max_shift-1 cells on each axis (minus z_shift_offset on z),
        tilted by up to max_tilt_deg about each horizontal axis."""
        flips = tuple(bool(b) for b in rng.integers(0, 2, 3))
        shift = [int(v) for v in rng.integers(0, max_shift, 3)]
        shift[2] -= z_shift_offset
        tilt = tuple(float(v) for v in np.radians(rng.uniform(-max_tilt_deg, max_tilt_deg, 2))) if max_tilt_deg else (0.0, 0.0)
        return Symmetry(*flips, tuple(shift), tilt, tuple(int(v) for v in pivot))


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
    """Training-time augmentation of a batch (defaults: none)."""

    colour_jitter: float = 0.1     #: per-sample colour gain and bias range (0..1 colour units)
    exposure: tuple = (1.0, 1.0)   #: per-sample brightness factor on linear colour, log-uniform in this range
    colour_dropout: float = 0.0    #: chance that a sample's colour is replaced by its mean (geometry decides)
    class_recolour: float = 0.0    #: chance that a sample's classes are repainted, each on a coin flip
    recolour_brightness: tuple = (0.08, 0.85)  #: ... with a new mean brightness drawn in this range
    max_shift_cells: int = 1       #: whole-cell shifts are drawn below this (the coarsest stride: every phase)
    z_shift_offset_cells: int = 0  #: z shifts are lowered by this (the floor lands below cell 0 as often as above)
    max_tilt_deg: float = 0.0      #: gravity tilted by up to this about each horizontal axis
    partial_wall_chance: float = 0.0     #: chance that the scan stops at a height (walls seen part of the way up)
    partial_wall_cells: tuple = (26, 40)  #: ... drawn in this range of cells above the floor (1.3-2 m at 5 cm)
    hole_chance: float = 0.0       #: chance of missing regions (1-3 holes)
    hole_radius_cells: tuple = (3, 10)  #: ... each a ball of this radius around a site
    max_sdf_noise_cells: float = 0.0    #: Gaussian noise on the signed-distance features, sigma drawn up to this
    min_sites: int = 64            #: the partial-scan drops are skipped when fewer sites would remain


def _augment_colour(f: np.ndarray, rng: np.random.Generator, aug: Augment) -> None:
    if aug.exposure != (1.0, 1.0):
        gain = np.exp(rng.uniform(np.log(aug.exposure[0]), np.log(aug.exposure[1])))
        f[:, 4:7] = np.clip((f[:, 4:7] + 0.5) * gain, 0, 1) - 0.5
    if aug.colour_jitter > 0:
        gain = rng.uniform(1 - aug.colour_jitter, 1 + aug.colour_jitter, 3)
        bias = rng.uniform(-aug.colour_jitter, aug.colour_jitter, 3) / 2
        f[:, 4:7] = np.clip((f[:, 4:7] + 0.5) * gain + bias, 0, 1) - 0.5
    if aug.colour_dropout > 0 and rng.random() < aug.colour_dropout:
        f[:, 4:7] = 0.0


def _recolour_classes(f: np.ndarray, classes: np.ndarray, rng: np.random.Generator, aug: Augment) -> None:
    """Repaint each class of a sample on a coin flip: its sites' colour keeps its variation about the class
    mean, and the mean becomes a random near-neutral tint. A class's colour then stops naming it (a wooden
    wall, a white door), while an object's colour still sets it apart from its neighbours."""
    for k in np.unique(classes):
        if rng.random() < 0.5:
            continue
        rows = classes == k
        rgb = f[rows, 4:7]
        mean = rgb.mean(0)
        target = rng.uniform(*aug.recolour_brightness) + rng.normal(0.0, 0.08, 3) - 0.5
        f[rows, 4:7] = np.clip((rgb - mean) * rng.uniform(0.5, 1.2) + target, -0.5, 0.5)


def _partial_scan(coords: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """Bool per site: kept after cutting the scan at a height and punching holes in it."""
    keep = np.ones(len(coords), bool)
    if rng.random() < aug.partial_wall_chance:
        keep &= coords[:, 2] < rng.integers(aug.partial_wall_cells[0], aug.partial_wall_cells[1] + 1)
    if rng.random() < aug.hole_chance:
        for _ in range(int(rng.integers(1, 4))):
            centre = coords[rng.integers(len(coords))]
            radius = rng.uniform(*aug.hole_radius_cells)
            keep &= np.linalg.norm(coords - centre, axis=1) > radius
    return keep if keep.sum() >= aug.min_sites else np.ones(len(coords), bool)


def _augment_geometry(f: np.ndarray, rng: np.random.Generator, aug: Augment) -> None:
    if aug.max_sdf_noise_cells > 0:
        sigma = rng.uniform(0, aug.max_sdf_noise_cells)
        f[:, 0] += rng.normal(0, sigma, len(f)).astype(np.float32)
        f[:, 1] = np.abs(f[:, 1] + rng.normal(0, sigma, len(f)).astype(np.float32))


def _unique_rows(c: np.ndarray) -> np.ndarray:
    """Rows of the first occurrence of each cell (a tilt can put two sites in one cell)."""
    _, rows = np.unique(c, axis=0, return_index=True)
    return np.sort(rows)


def _augmented_sites(s: Sample, rng: np.random.Generator, aug: Augment, crop_cells: int):
    """(cells, features, symmetry) of one sample after cropping and every augmentation."""
    rows = crop_rows(s.coords, rng, crop_cells) if crop_cells else np.arange(len(s.coords))
    rows = rows[_partial_scan(s.coords[rows], rng, aug)]
    pivot = (*np.round(s.coords[rows, :2].mean(0)).astype(int), 0)
    sym = Symmetry.random(rng, aug.max_shift_cells, aug.z_shift_offset_cells, aug.max_tilt_deg, pivot)
    c = sym.apply(s.coords[rows])
    keep = _unique_rows(c)
    f = s.features[rows[keep]].copy()
    if aug.class_recolour > 0 and rng.random() < aug.class_recolour:
        classes = BatchTargets._lookup(s.label, s.box_lo, s.coords[rows[keep]], np.uint8(IGNORE))
        _recolour_classes(f, classes, rng, aug)
    _augment_colour(f, rng, aug)
    _augment_geometry(f, rng, aug)
    return c[keep], f, sym


def make_batch(samples: list[Sample], rng: np.random.Generator | None, aug: Augment = Augment(),
               crop_cells: int = 0):
    """(SparseTensor input, BatchTargets). rng None: no augmentation and no crop (validation)."""
    coords, feats, syms = [], [], []
    for b, s in enumerate(samples):
        if rng is None:
            c, f, sym = s.coords.astype(np.int64), s.features.copy(), Symmetry()
        else:
            c, f, sym = _augmented_sites(s, rng, aug, crop_cells)
        coords.append(np.column_stack([np.full(len(c), b), c]))
        feats.append(f)
        syms.append(sym)
    x = SparseTensor.from_coords(torch.from_numpy(np.concatenate(coords).astype(np.int32)),
                                 torch.from_numpy(np.concatenate(feats)))
    return x, BatchTargets(samples, syms)
