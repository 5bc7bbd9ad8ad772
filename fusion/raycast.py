"""Owns model raycasting for tracking: a dense block index over the hash map and a numba ray marcher.

The marcher samples the TSDF trilinearly and refines the zero crossing, so rendered depth is accurate
to a fraction of a voxel (Open3D's ray_cast samples the nearest voxel and is off by about a voxel).
Pure functions plus `BlockIndex`, which the fusion thread owns.
"""
from __future__ import annotations

import numba as nb
import numpy as np

INDEX_MARGIN_BLOCKS = 8  # room added around the scanned space when the index grows


class BlockIndex:
    """Dense 3D array: block coordinate -> buffer index in the volume (-1 where none), and the list of
    the blocks it holds (for the raycaster's depth ranges). Fusion thread."""

    def __init__(self):
        self.origin = np.zeros(3, np.int64)
        self.table = np.full((1, 1, 1), -1, np.int32)
        self.keys = np.zeros((0, 3), np.int32)

    def update(self, keys: np.ndarray, buf_indices: np.ndarray) -> None:
        """Record blocks `keys` (N,3) at `buf_indices` (N,), growing the table when they fall outside."""
        if len(keys) == 0:
            return
        keys = np.asarray(keys, np.int32)
        lo, hi = keys.min(0), keys.max(0)
        if np.any(lo < self.origin) or np.any(hi >= self.origin + self.table.shape):
            self._grow(np.minimum(lo, self.origin), np.maximum(hi + 1, self.origin + self.table.shape))
        idx = keys - self.origin
        new = (self.table[idx[:, 0], idx[:, 1], idx[:, 2]] < 0) & (np.asarray(buf_indices) >= 0)
        if np.any(new):
            self.keys = np.concatenate([self.keys, np.unique(keys[new], axis=0)])
        self.table[idx[:, 0], idx[:, 1], idx[:, 2]] = buf_indices

    def rebuild(self, keys: np.ndarray, buf_indices: np.ndarray) -> None:
        self.table[:] = -1
        self.keys = np.zeros((0, 3), np.int32)
        self.update(keys, buf_indices)

    def _grow(self, lo, hi) -> None:
        lo = lo - INDEX_MARGIN_BLOCKS
        hi = hi + INDEX_MARGIN_BLOCKS
        table = np.full(tuple(hi - lo), -1, np.int32)
        o = self.origin - lo
        s = self.table.shape
        table[o[0]:o[0] + s[0], o[1]:o[1] + s[1], o[2]:o[2] + s[2]] = self.table
        self.origin, self.table = lo, table


@nb.njit(cache=True, fastmath=True, nogil=True)
def depth_ranges(keys, block_m, margin_m, T_cam_world, fx, fy, cx, cy, width, height, tile, dmin, dmax):
    """Per image tile (tile x tile pixels) the camera depth range [lo, hi] in which any allocated block
    lies (lo > hi: none): each block's corners, widened by `margin_m`, projected into the image.

    A block reaching behind `dmin` opens every tile from dmin (rare: the camera inside the scanned space).
    """
    th, tw = (height + tile - 1) // tile, (width + tile - 1) // tile
    lo = np.full((th, tw), np.float32(1e9))
    hi = np.full((th, tw), np.float32(-1.0))
    R, t = T_cam_world[:3, :3], T_cam_world[:3, 3]
    for b in range(keys.shape[0]):
        zmin, zmax = 1e9, -1e9
        umin, umax, vmin, vmax = 1e9, -1e9, 1e9, -1e9
        for c in range(8):
            w = np.empty(3)
            for a in range(3):
                side = (c >> a) & 1
                w[a] = keys[b, a] * block_m + (block_m + margin_m if side else -margin_m)
            z = R[2, 0] * w[0] + R[2, 1] * w[1] + R[2, 2] * w[2] + t[2]
            zmin, zmax = min(zmin, z), max(zmax, z)
            if z > 1e-6:
                x = R[0, 0] * w[0] + R[0, 1] * w[1] + R[0, 2] * w[2] + t[0]
                y = R[1, 0] * w[0] + R[1, 1] * w[1] + R[1, 2] * w[2] + t[1]
                u, v = fx * x / z + cx, fy * y / z + cy
                umin, umax, vmin, vmax = min(umin, u), max(umax, u), min(vmin, v), max(vmax, v)
        if zmax < dmin or zmin > dmax:
            continue
        if zmin < dmin:  # straddles the near plane: its projection is unbounded
            umin, umax, vmin, vmax = -1.0, width + 1.0, -1.0, height + 1.0
            zmin = dmin
        t0, t1 = max(0, int(np.floor(umin)) // tile), min(tw - 1, int(np.floor(umax)) // tile)
        s0, s1 = max(0, int(np.floor(vmin)) // tile), min(th - 1, int(np.floor(vmax)) // tile)
        for ty in range(s0, s1 + 1):
            for tx in range(t0, t1 + 1):
                lo[ty, tx] = min(lo[ty, tx], zmin)
                hi[ty, tx] = max(hi[ty, tx], zmax)
    return lo, hi


@nb.njit(cache=True, fastmath=True, inline="always")
def _sample(tsdf, weight, table, shift, wmin, px, py, pz):
    """Trilinear TSDF at (px,py,pz) in voxel units from the table origin; (value, ok, block_present).

    Blocks are 2**shift voxels on an edge.
    """
    r = 1 << shift
    mask = r - 1
    if px < 0 or py < 0 or pz < 0:
        return 0.0, False, False
    ix, iy, iz = int(px), int(py), int(pz)
    if ix + 1 >= table.shape[0] * r or iy + 1 >= table.shape[1] * r or iz + 1 >= table.shape[2] * r:
        return 0.0, False, False
    fx, fy, fz = px - ix, py - iy, pz - iz
    lx, ly, lz = ix & mask, iy & mask, iz & mask
    b0 = table[ix >> shift, iy >> shift, iz >> shift]
    if b0 < 0:
        return 0.0, False, False
    acc = 0.0
    for c in range(8):
        cx, cy, cz = c & 1, (c >> 1) & 1, (c >> 2) & 1
        if lx + cx < r and ly + cy < r and lz + cz < r:
            b, vx, vy, vz = b0, lx + cx, ly + cy, lz + cz
        else:
            gx, gy, gz = ix + cx, iy + cy, iz + cz
            b = table[gx >> shift, gy >> shift, gz >> shift]
            if b < 0:
                return 0.0, False, True
            vx, vy, vz = gx & mask, gy & mask, gz & mask
        if weight[b, vz, vy, vx] < wmin:
            return 0.0, False, True
        w = (fx if cx else 1 - fx) * (fy if cy else 1 - fy) * (fz if cz else 1 - fz)
        acc += w * tsdf[b, vz, vy, vx]
    return acc, True, True


@nb.njit(cache=True, fastmath=True, inline="always")
def _block_exit(px, py, pz, dx, dy, dz, r):
    """Depth (metres along the ray) from voxel-unit point p to the exit of its r^3 block, direction d."""
    best = 1e9
    for p, d in ((px, dx), (py, dy), (pz, dz)):
        if abs(d) > 1e-12:
            lo = np.floor(p / r) * r
            bound = lo + r if d > 0 else lo
            best = min(best, (bound - p) / d)
    return max(best, 0.0)


@nb.njit(cache=True, fastmath=True, inline="always")
def _march(tsdf, weight, table, shift, wmin, ox, oy, oz, dx, dy, dz, len_m, vsize, trunc_m, z, z_end):
    """(depth of the first +/- zero crossing from z to z_end or 0, TSDF at the first valid sample or 2)."""
    r = 1 << shift
    z_prev = -1.0
    s_prev = 0.0
    first = 2.0
    while z < z_end:
        s, ok, present = _sample(tsdf, weight, table, shift, wmin, ox + dx * z, oy + dy * z, oz + dz * z)
        if ok:
            if first > 1.5:
                first = s
            if z_prev > 0 and s_prev > 0 and s <= 0:
                return z_prev + (z - z_prev) * s_prev / (s_prev - s), first
            z_prev, s_prev = z, s
            step_m = max(vsize, 0.8 * s * trunc_m) if s > 0 else vsize
            z += step_m / len_m
        elif present:  # unobserved voxels: a valid band is at least 2 truncation distances thick
            z_prev = -1.0
            z += 2.0 * vsize / len_m
        else:  # no block here: jump to where the ray leaves this block
            z_prev = -1.0
            z += _block_exit(ox + dx * z, oy + dy * z, oz + dz * z, dx, dy, dz, r) + 1e-4
    return 0.0, first


@nb.njit(cache=True, fastmath=True, inline="always")
def _hint(guide, u, v, margin_m):
    """Where a full-resolution ray may start: the nearest coarse depth around it less `margin_m`
    (0: no guide, or a coarse neighbour without a surface)."""
    if guide.shape[0] == 0:
        return 0.0
    gu, gv = u // 2, v // 2
    best = 1e9
    for y in range(max(0, gv - 1), min(guide.shape[0], gv + 2)):
        for x in range(max(0, gu - 1), min(guide.shape[1], gu + 2)):
            d = guide[y, x]
            if d <= 0:
                return 0.0
            best = min(best, d)
    return best - margin_m


@nb.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def raycast_depth(tsdf, weight, table, origin, shift, vsize, trunc_m, wmin, T_world_cam,
                  fx, fy, cx, cy, width, height, dmin, dmax, range_lo, range_hi, tile, guide):
    """Depth (H,W) float32 metres of the first TSDF zero crossing along each pixel ray (0 = none).

    Blocks have 2**shift voxels an edge; `origin` is the table's first block coordinate. Each ray
    marches only within its tile's depth range (`depth_ranges`): empty space is skipped. `guide`, a
    render at half this resolution ((0,0): none), lets a ray start just before the nearest surface its
    neighbourhood saw; a ray that finds itself behind a surface there marches again from the start.
    """
    out = np.zeros((height, width), np.float32)
    r = 1 << shift
    R = T_world_cam[:3, :3]
    o = T_world_cam[:3, 3] / vsize - origin * r
    margin_m = trunc_m
    for v in nb.prange(height):
        for u in range(width):
            xc, yc = (u - cx) / fx, (v - cy) / fy
            # world direction per metre of depth, in voxel units
            dx = (R[0, 0] * xc + R[0, 1] * yc + R[0, 2]) / vsize
            dy = (R[1, 0] * xc + R[1, 1] * yc + R[1, 2]) / vsize
            dz = (R[2, 0] * xc + R[2, 1] * yc + R[2, 2]) / vsize
            len_m = np.sqrt(dx * dx + dy * dy + dz * dz) * vsize  # metres travelled per metre of depth
            z0 = max(dmin, range_lo[v // tile, u // tile])
            z_end = min(dmax, range_hi[v // tile, u // tile])
            hint = _hint(guide, u, v, margin_m)
            if hint > z0:
                d, first = _march(tsdf, weight, table, shift, wmin, o[0], o[1], o[2], dx, dy, dz, len_m,
                                  vsize, trunc_m, hint, z_end)
                if first > 0:   # started in front of every surface (or saw none): the answer stands
                    out[v, u] = d
                    continue
            out[v, u] = _march(tsdf, weight, table, shift, wmin, o[0], o[1], o[2], dx, dy, dz, len_m,
                               vsize, trunc_m, z0, z_end)[0]
    return out
