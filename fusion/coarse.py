"""Owns coarse snapshots of the TSDF volume: per-cell features on the nets' grid for chunks plus a halo.

The nets read the fused volume on a coarser grid than fusion (`CoarseGridConfig.voxel_size_m`, 5 cm by
default) in fixed chunks (`chunk_voxels` cells an edge, aligned to the world origin, so the nets'
strides line up with chunk borders). `coarse_region` summarises every fine voxel inside the requested
chunks (and a halo of context around them) into its coarse cell:

    sdf_mean   mean signed distance of the observed fine voxels, in coarse voxels (clipped)
    sdf_absmin smallest |signed distance| there, in coarse voxels
    observed   share of the cell's fine voxels with integration weight
    near       share of the observed fine voxels within one fine voxel of the surface
    r, g, b    mean colour of the near-surface voxels (of all observed ones if none), 0..1, centred

A cell becomes a site when it was observed and the surface passes within `site_band_voxels` of it.
On the CPU the fine voxel buffers are read in place (on a GPU only the region's blocks are copied),
so call it on the thread that owns the volume (the fusion thread); the snapshot it returns is immutable
and may be handed to any thread.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from fusion.dirty import chunk_keys_of_blocks
from fusion.volume import TsdfVolume

FEATURES = ("sdf_mean", "sdf_absmin", "observed", "near", "r", "g", "b")


@dataclass(frozen=True)
class CoarseGridConfig:
    """The nets' grid."""

    voxel_size_m: float = 0.05   #: edge of one coarse cell
    chunk_voxels: int = 32       #: cells along a chunk edge (chunk edge 1.6 m at 5 cm)
    halo_voxels: int = 28        #: context cells on each side of a chunk (at least the model's receptive field)
    site_band_voxels: float = 0.75  #: a cell is a site when the surface passes this close (coarse voxels)
    sdf_clip_voxels: float = 1.5    #: signed distances are clipped to this many coarse voxels

    @property
    def chunk_size_m(self) -> float:
        return self.voxel_size_m * self.chunk_voxels


@dataclass(frozen=True)
class CoarseRegion:
    """Sites of the nets' grid in some chunks plus their halo (immutable; any thread may read it).

    coords (N,3) int32 global cell indices (cell i spans [i, i+1) * voxel_size_m); features (N,7)
    float32 in FEATURES order; core (N,) bool: the site lies in one of `keys` (not only in the halo).
    """

    keys: tuple
    coords: np.ndarray
    features: np.ndarray
    core: np.ndarray
    grid: CoarseGridConfig

    def __len__(self) -> int:
        return len(self.coords)


@numba.njit(cache=True, nogil=True)
def _axis_cells(block_key, res, ratio, lo, out):
    """Coarse cell (relative to lo) of each of a block's `res` fine voxels along one axis."""
    for t in range(res):
        out[t] = int(np.floor((block_key * res + t) * ratio + 1e-6)) - lo


@numba.njit(cache=True, nogil=True)
def _accumulate(bufs, keys, tsdf, weight, color, res, fine_m, coarse_m, trunc_m, lo, dims, acc):
    """acc[x, y, z, :] += (n_obs, sum sdf, min |sdf| (slot 2), n_near, sum rgb near (3), sum rgb all (3)).
    Cell indices are computed once per block and axis; voxels are visited in buffer order."""
    ratio = fine_m / coarse_m
    ix, iy, iz = np.empty(res, np.int64), np.empty(res, np.int64), np.empty(res, np.int64)
    for j in range(len(bufs)):
        b = bufs[j]
        _axis_cells(keys[j, 0], res, ratio, lo[0], ix)
        _axis_cells(keys[j, 1], res, ratio, lo[1], iy)
        _axis_cells(keys[j, 2], res, ratio, lo[2], iz)
        for z in range(res):
            cz = iz[z]
            if cz < 0 or cz >= dims[2]:
                continue
            for y in range(res):
                cy = iy[y]
                if cy < 0 or cy >= dims[1]:
                    continue
                for x in range(res):
                    cx = ix[x]
                    if weight[b, z, y, x] <= 0.0 or cx < 0 or cx >= dims[0]:
                        continue
                    _add_voxel(acc, cx, cy, cz, tsdf[b, z, y, x] * trunc_m, color[b, z, y, x], fine_m)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_voxel(acc, cx, cy, cz, sdf, rgb, fine_m):
    """One observed fine voxel into its coarse cell (indexed in place: no per-voxel views)."""
    a = abs(sdf)
    acc[cx, cy, cz, 0] += 1.0
    acc[cx, cy, cz, 1] += sdf
    if a < acc[cx, cy, cz, 2]:
        acc[cx, cy, cz, 2] = a
    near = a <= fine_m
    if near:
        acc[cx, cy, cz, 3] += 1.0
    for c in range(3):
        acc[cx, cy, cz, 7 + c] += rgb[c]
        if near:
            acc[cx, cy, cz, 4 + c] += rgb[c]


def _block_range(lo_cells: np.ndarray, hi_cells: np.ndarray, grid: CoarseGridConfig, block_m: float):
    lo_b = np.floor(lo_cells * grid.voxel_size_m / block_m).astype(np.int64) - 1
    hi_b = np.floor(hi_cells * grid.voxel_size_m / block_m).astype(np.int64) + 1
    axes = [np.arange(a, b + 1) for a, b in zip(lo_b, hi_b)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.int32)


def _features(acc: np.ndarray, grid: CoarseGridConfig, fine_m: float) -> tuple[np.ndarray, np.ndarray]:
    n_obs = acc[..., 0]
    v = grid.voxel_size_m
    site = (n_obs > 0) & (acc[..., 2] < grid.site_band_voxels * v)
    idx = np.nonzero(site)
    a = acc[idx]
    n = a[:, 0]
    cells_per_coarse = max(1.0, (v / fine_m) ** 3)
    near = a[:, 3]
    rgb = np.where(near[:, None] > 0, a[:, 4:7] / np.maximum(near, 1)[:, None], a[:, 7:10] / n[:, None])
    clip = grid.sdf_clip_voxels
    feats = np.column_stack([
        np.clip(a[:, 1] / n / v, -clip, clip), np.clip(a[:, 2] / v, 0, clip),
        np.minimum(n / cells_per_coarse, 1.0), near / n, rgb / 255.0 - 0.5]).astype(np.float32)
    return np.column_stack(idx).astype(np.int32), feats


def coarse_region(volume: TsdfVolume, keys, grid: CoarseGridConfig = CoarseGridConfig(),
                  halo_voxels: int | None = None) -> CoarseRegion:
    """Sites in the chunks `keys` (tuples of chunk indices) plus a halo. Call on the volume's thread."""
    keys = tuple(sorted({tuple(int(v) for v in key) for key in keys}))
    halo = grid.halo_voxels if halo_voxels is None else halo_voxels
    if not keys:
        return CoarseRegion((), np.zeros((0, 3), np.int32), np.zeros((0, len(FEATURES)), np.float32),
                            np.zeros(0, bool), grid)
    k = np.asarray(keys, np.int64)
    n = grid.chunk_voxels
    lo, hi = k.min(0) * n - halo, (k.max(0) + 1) * n + halo  # cells [lo, hi)
    cfg = volume.config
    block_keys = _block_range(lo, hi, grid, cfg.block_size_m)
    bufs = volume.lookup(block_keys)
    found = bufs >= 0
    bufs, block_keys = bufs[found], block_keys[found]
    dims = (hi - lo).astype(np.int64)
    acc = np.zeros((*dims, 10), np.float32)
    acc[..., 2] = np.inf
    if len(bufs):
        (tsdf, weight, color), bufs = volume.host_voxels(bufs)  # on a GPU only the region's blocks are copied
        _accumulate(bufs, block_keys, tsdf, weight, color, cfg.block_resolution, cfg.voxel_size_m,
                    grid.voxel_size_m, cfg.trunc_m, lo, dims, acc)
    local, feats = _features(acc, grid, cfg.voxel_size_m)
    coords = (local + lo).astype(np.int32)
    in_region, core = region_membership(coords, k, n, halo)
    return CoarseRegion(keys, coords[in_region], feats[in_region], core[in_region], grid)


def region_membership(coords: np.ndarray, keys: np.ndarray, n: int, halo: int) -> tuple[np.ndarray, np.ndarray]:
    """Per site: inside some chunk's halo box; inside some chunk's core."""
    in_region = np.zeros(len(coords), bool)
    core = np.zeros(len(coords), bool)
    for key in keys:
        rel = coords - key * n
        in_region |= np.all((rel >= -halo) & (rel < n + halo), axis=1)
        core |= np.all((rel >= 0) & (rel < n), axis=1)
    return in_region, core


def chunk_keys_of_cells(coords: np.ndarray, grid: CoarseGridConfig) -> np.ndarray:
    """(N,3) int32 chunk key of each coarse cell."""
    return np.floor_divide(np.asarray(coords), grid.chunk_voxels).astype(np.int32)


def all_chunk_keys(volume: TsdfVolume, grid: CoarseGridConfig) -> set:
    """Keys of every chunk that holds allocated blocks."""
    return chunk_keys_of_blocks(volume.active_keys(), volume.config.block_size_m, grid.chunk_size_m)
