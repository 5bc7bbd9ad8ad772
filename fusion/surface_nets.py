"""Owns the surface-extraction kernel: naive surface nets over TSDF voxel blocks (numba).

One vertex per cell that the surface crosses, one quad per voxel edge with a sign change. A block
owns the edges that start at its voxels, so meshing blocks separately and taking the union gives each
face exactly once; a vertex is keyed by its global cell, so duplicates across blocks merge exactly.
Pure functions: any thread may call them.
"""
from __future__ import annotations

import numba as nb
import numpy as np

KEY_BIAS = 1 << 20  # global cell coordinates are offset by this before packing into an int64 key


@nb.njit(cache=True)
def _gather(tsdf, weight, color, nbr, m, r, wmin, lt, lc):
    """Copy block m and a one-voxel halo into lt (r+2)^3 and lc (r+2)^3x3; unknown voxels get NaN."""
    n = r + 2
    b0 = nbr[m, 13]
    lt[1:r + 1, 1:r + 1, 1:r + 1] = tsdf[b0]
    lc[1:r + 1, 1:r + 1, 1:r + 1] = color[b0]
    for z in range(1, r + 1):
        for y in range(1, r + 1):
            for x in range(1, r + 1):
                t = lt[z, y, x]
                if weight[b0, z - 1, y - 1, x - 1] < wmin or abs(t) >= 1.0:
                    lt[z, y, x] = np.nan
    for z in range(n):
        oz = -1 if z == 0 else (1 if z == n - 1 else 0)
        for y in range(n):
            oy = -1 if y == 0 else (1 if y == n - 1 else 0)
            on_shell = oz != 0 or oy != 0
            for x in range(0, n, 1 if on_shell else n - 1):  # inner rows: only the two end voxels
                ox = -1 if x == 0 else (1 if x == n - 1 else 0)
                b = nbr[m, (oz + 1) * 9 + (oy + 1) * 3 + (ox + 1)]
                lx, ly, lz = x - 1 - ox * r, y - 1 - oy * r, z - 1 - oz * r
                if b < 0 or weight[b, lz, ly, lx] < wmin or abs(tsdf[b, lz, ly, lx]) >= 1.0:
                    lt[z, y, x] = np.nan
                    continue
                lt[z, y, x] = tsdf[b, lz, ly, lx]
                for k in range(3):
                    lc[z, y, x, k] = color[b, lz, ly, lx, k]


@nb.njit(cache=True)
def _make_vertex(lt, lc, cx, cy, cz, key, r, vsize, V, C, N, Kv, nv):
    """Vertex of the cell with local min corner (cx,cy,cz) (halo coords); False when none."""
    sx = sy = sz = 0.0
    gx = gy = gz = 0.0
    nx = ny = nz = 0.0
    n = 0
    for i in range(8):
        ix, iy, iz = i & 1, (i >> 1) & 1, (i >> 2) & 1
        ti = lt[cz + iz, cy + iy, cx + ix]
        if ti != ti:
            continue
        for axis in range(3):
            if (i >> axis) & 1:
                continue
            jx, jy, jz = ix + (axis == 0), iy + (axis == 1), iz + (axis == 2)
            tj = lt[cz + jz, cy + jy, cx + jx]
            if tj != tj:
                continue
            d = tj - ti
            if axis == 0:
                gx += d; nx += 1
            elif axis == 1:
                gy += d; ny += 1
            else:
                gz += d; nz += 1
            if (ti < 0) == (tj < 0):
                continue
            s = ti / (ti - tj)
            sx += ix + (s if axis == 0 else 0.0)
            sy += iy + (s if axis == 1 else 0.0)
            sz += iz + (s if axis == 2 else 0.0)
            n += 1
    if n == 0:
        return False
    px, py, pz = sx / n, sy / n, sz / n
    wsum = 0.0
    c0 = c1 = c2 = 0.0
    for i in range(8):
        ix, iy, iz = i & 1, (i >> 1) & 1, (i >> 2) & 1
        if lt[cz + iz, cy + iy, cx + ix] != lt[cz + iz, cy + iy, cx + ix]:
            continue
        w = (px if ix else 1 - px) * (py if iy else 1 - py) * (pz if iz else 1 - pz) + 1e-6
        wsum += w
        c0 += w * lc[cz + iz, cy + iy, cx + ix, 0]
        c1 += w * lc[cz + iz, cy + iy, cx + ix, 1]
        c2 += w * lc[cz + iz, cy + iy, cx + ix, 2]
    gx = gx / nx if nx > 0 else 0.0
    gy = gy / ny if ny > 0 else 0.0
    gz = gz / nz if nz > 0 else 0.0
    norm = np.sqrt(gx * gx + gy * gy + gz * gz) + 1e-12
    # global cell coordinates: halo index 1 is the block's voxel 0
    g0, g1, g2 = key[0] * r + cx - 1, key[1] * r + cy - 1, key[2] * r + cz - 1
    V[nv, 0] = (g0 + px) * vsize; V[nv, 1] = (g1 + py) * vsize; V[nv, 2] = (g2 + pz) * vsize
    C[nv, 0] = min(255.0, c0 / wsum + 0.5); C[nv, 1] = min(255.0, c1 / wsum + 0.5)
    C[nv, 2] = min(255.0, c2 / wsum + 0.5)
    N[nv, 0] = gx / norm; N[nv, 1] = gy / norm; N[nv, 2] = gz / norm
    Kv[nv] = ((g0 + KEY_BIAS) << 42) | ((g1 + KEY_BIAS) << 21) | (g2 + KEY_BIAS)
    return True


@nb.njit(cache=True)
def _grow(a, n):
    if n <= a.shape[0]:
        return a
    out = np.empty((max(n, 2 * a.shape[0]),) + a.shape[1:], a.dtype)
    out[: a.shape[0]] = a
    return out


@nb.njit(cache=True, nogil=True)
def mesh_blocks(tsdf, weight, color, nbr, keys, r, vsize, wmin):
    """Mesh blocks m = 0..M-1 (buffer nbr[m,13], neighbours nbr[m,:27] in (dz,dy,dx) order, key keys[m]).

    Returns positions (V,3) f32 metres, colours (V,3) u8, normals (V,3) f32, vertex keys (V,) i64,
    faces (F,3) i32 indexing the block's own vertices, and per-block vertex/face offsets (M+1,).
    """
    M = nbr.shape[0]
    n = r + 2
    V = np.empty((4096, 3), np.float32); C = np.empty((4096, 3), np.uint8)
    N = np.empty((4096, 3), np.float32); Kv = np.empty(4096, np.int64)
    F = np.empty((8192, 3), np.int32)
    voff = np.zeros(M + 1, np.int64); foff = np.zeros(M + 1, np.int64)
    lt = np.empty((n, n, n), np.float32)
    lc = np.empty((n, n, n, 3), np.float32)
    vid = np.empty((n, n, n), np.int64)  # vertex id per cell (min corner in halo coords); -1 unknown, -2 none
    quad = np.empty(4, np.int64)
    nv = 0; nf = 0
    for m in range(M):
        _gather(tsdf, weight, color, nbr, m, r, wmin, lt, lc)
        vid[:] = -1
        base = nv
        V = _grow(V, nv + n * n * n); C = _grow(C, nv + n * n * n)
        N = _grow(N, nv + n * n * n); Kv = _grow(Kv, nv + n * n * n)
        F = _grow(F, nf + 6 * r * r * r)
        for z in range(1, r + 1):
            for y in range(1, r + 1):
                for x in range(1, r + 1):
                    t0 = lt[z, y, x]
                    if t0 != t0:
                        continue
                    for a in range(3):
                        t1 = lt[z + (a == 2), y + (a == 1), x + (a == 0)]
                        if t1 != t1 or (t0 < 0) == (t1 < 0):
                            continue
                        b, c = (a + 1) % 3, (a + 2) % 3
                        good = True
                        for q in range(4):
                            s = 1 if (q == 1 or q == 2) else 0
                            u = 1 if q >= 2 else 0
                            qx = x - (s if b == 0 else 0) - (u if c == 0 else 0)
                            qy = y - (s if b == 1 else 0) - (u if c == 1 else 0)
                            qz = z - (s if b == 2 else 0) - (u if c == 2 else 0)
                            v = vid[qz, qy, qx]
                            if v == -1:
                                if _make_vertex(lt, lc, qx, qy, qz, keys[m], r, vsize, V, C, N, Kv, nv):
                                    v = nv - base
                                    nv += 1
                                else:
                                    v = -2
                                vid[qz, qy, qx] = v
                            if v == -2:
                                good = False
                                break
                            quad[q] = v
                        if not good:
                            continue
                        if t0 < 0:
                            F[nf, 0] = quad[0]; F[nf, 1] = quad[1]; F[nf, 2] = quad[2]
                            F[nf + 1, 0] = quad[0]; F[nf + 1, 1] = quad[2]; F[nf + 1, 2] = quad[3]
                        else:
                            F[nf, 0] = quad[0]; F[nf, 1] = quad[2]; F[nf, 2] = quad[1]
                            F[nf + 1, 0] = quad[0]; F[nf + 1, 1] = quad[3]; F[nf + 1, 2] = quad[2]
                        nf += 2
        voff[m + 1] = nv
        foff[m + 1] = nf
    return V[:nv], C[:nv], N[:nv], Kv[:nv], F[:nf], voff, foff
