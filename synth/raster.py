"""Owns the compiled per-pixel kernels: z-buffer rasterization, texturing/shading and the depth sensor noise.

Numba kernels over caller-owned buffers; a kernel call may run on any thread, but buffers passed to one
call must not be shared with a concurrent call.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _clip_near(a, b, c, near, out):
    """Clip triangle a,b,c (camera coords) to z >= near; writes up to 4 vertices into out, returns count."""
    pts = (a, b, c)
    n = 0
    for i in range(3):
        p, q = pts[i], pts[(i + 1) % 3]
        pin, qin = p[2] >= near, q[2] >= near
        if pin:
            out[n] = p
            n += 1
        if pin != qin:
            t = (near - p[2]) / (q[2] - p[2])
            out[n] = p + t * (q - p)
            n += 1
    return n


@njit(cache=True)
def _fill(p0, p1, p2, tid, fx, fy, cx, cy, near, zbuf, idbuf):
    h, w = zbuf.shape
    nx = (p1[1] - p0[1]) * (p2[2] - p0[2]) - (p1[2] - p0[2]) * (p2[1] - p0[1])
    ny = (p1[2] - p0[2]) * (p2[0] - p0[0]) - (p1[0] - p0[0]) * (p2[2] - p0[2])
    nz = (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p1[1] - p0[1]) * (p2[0] - p0[0])
    k = nx * p0[0] + ny * p0[1] + nz * p0[2]
    if abs(k) < 1e-12:
        return
    u0, v0 = fx * p0[0] / p0[2] + cx, fy * p0[1] / p0[2] + cy
    u1, v1 = fx * p1[0] / p1[2] + cx, fy * p1[1] / p1[2] + cy
    u2, v2 = fx * p2[0] / p2[2] + cx, fy * p2[1] / p2[2] + cy
    area = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
    if abs(area) < 1e-9:
        return
    s = 1.0 if area > 0 else -1.0
    eps = -1e-7 * abs(area)
    x0, x1 = max(0, int(math.ceil(min(u0, u1, u2)))), min(w - 1, int(math.floor(max(u0, u1, u2))))
    y0, y1 = max(0, int(math.ceil(min(v0, v1, v2)))), min(h - 1, int(math.floor(max(v0, v1, v2))))
    for y in range(y0, y1 + 1):
        ry = (y - cy) / fy
        for x in range(x0, x1 + 1):
            e0 = s * ((u1 - u0) * (y - v0) - (v1 - v0) * (x - u0))
            e1 = s * ((u2 - u1) * (y - v1) - (v2 - v1) * (x - u1))
            e2 = s * ((u0 - u2) * (y - v2) - (v0 - v2) * (x - u2))
            if e0 < eps or e1 < eps or e2 < eps:
                continue
            den = nx * (x - cx) / fx + ny * ry + nz
            if den == 0.0:
                continue
            z = k / den
            if near <= z < zbuf[y, x]:
                zbuf[y, x] = z
                idbuf[y, x] = tid


@njit(cache=True)
def rasterize(verts_cam, tris, fx, fy, cx, cy, near, zbuf, idbuf):
    """Fill zbuf (z depth, inf = nothing) and idbuf (triangle id, -1) with the nearest surface per pixel."""
    zbuf[:] = np.inf
    idbuf[:] = -1
    poly = np.empty((4, 3))
    for t in range(tris.shape[0]):
        a, b, c = verts_cam[tris[t, 0]], verts_cam[tris[t, 1]], verts_cam[tris[t, 2]]
        if a[2] < near and b[2] < near and c[2] < near:
            continue
        n = _clip_near(a, b, c, near, poly)
        if n >= 3:
            _fill(poly[0], poly[1], poly[2], t, fx, fy, cx, cy, near, zbuf, idbuf)
        if n == 4:
            _fill(poly[0], poly[2], poly[3], t, fx, fy, cx, cy, near, zbuf, idbuf)


@njit(cache=True, fastmath=True, parallel=True)
def shade(zbuf, idbuf, rays, R, o, normals, colors, mats, offs, tex, texel_m, lights, ambient,
          noise, noise_off, color_out, cos_out):
    """Textured Lambert colour (uint8) and the cosine of the incidence angle for every pixel.

    Colour noise is read from noise[noise_off + 3 * pixel + channel] (the caller keeps that in range).
    """
    h, w = zbuf.shape
    size = tex.shape[1]
    mask = size - 1
    for y in prange(h):
        for x in range(w):
            t = idbuf[y, x]
            if t < 0:
                color_out[y, x, :] = 0
                cos_out[y, x] = 0.0
                continue
            z = zbuf[y, x]
            dx = R[0, 0] * rays[y, x, 0] + R[0, 1] * rays[y, x, 1] + R[0, 2]
            dy = R[1, 0] * rays[y, x, 0] + R[1, 1] * rays[y, x, 1] + R[1, 2]
            dz = R[2, 0] * rays[y, x, 0] + R[2, 1] * rays[y, x, 1] + R[2, 2]
            px, py, pz = o[0] + z * dx, o[1] + z * dy, o[2] + z * dz
            n0, n1, n2 = normals[t, 0], normals[t, 1], normals[t, 2]
            dn = n0 * dx + n1 * dy + n2 * dz
            if dn > 0:
                n0, n1, n2, dn = -n0, -n1, -n2, -dn
            cos_out[y, x] = -dn / math.sqrt(dx * dx + dy * dy + dz * dz)
            a0, a1, a2 = abs(n0), abs(n1), abs(n2)
            if a2 >= a0 and a2 >= a1:
                tu, tv = px, py
            elif a0 >= a1:
                tu, tv = py, pz
            else:
                tu, tv = px, pz
            iu = int(math.floor((tu + offs[t, 0]) / texel_m)) & mask
            iv = int(math.floor((tv + offs[t, 1]) / texel_m)) & mask
            light = ambient
            for li in range(lights.shape[0]):
                lx, ly, lz = lights[li, 0] - px, lights[li, 1] - py, lights[li, 2] - pz
                d2 = lx * lx + ly * ly + lz * lz
                ndl = (n0 * lx + n1 * ly + n2 * lz) / math.sqrt(d2)
                if ndl > 0:
                    light += lights[li, 3] * ndl / (1.0 + 0.08 * d2)
            m = mats[t]
            base = (y * w + x) * 3 + noise_off
            for ch in range(3):
                v = colors[t, ch] * tex[m, iv, iu, ch] * (light / 128.0) + noise[base + ch]
                color_out[y, x, ch] = min(255.0, max(0.0, v + 0.5))


@njit(cache=True)
def _coarse(field, x, y, cell):
    gx, gy = x / cell, y / cell
    i, j = int(gx), int(gy)
    fx, fy = gx - i, gy - j
    return ((field[j, i] * (1 - fx) + field[j, i + 1] * fx) * (1 - fy)
            + (field[j + 1, i] * (1 - fx) + field[j + 1, i + 1] * fx) * fy)


@njit(cache=True)
def _edge_partner(z, x, y):
    """Depth of the 4-neighbour that differs most from pixel (x, y) (0 when none is valid)."""
    h, w = z.shape
    best, partner = 0.0, 0.0
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        xn, yn = x + dx, y + dy
        if 0 <= xn < w and 0 <= yn < h and z[yn, xn] > 0:
            d = abs(z[yn, xn] - z[y, x])
            if d > best:
                best, partner = d, z[yn, xn]
    return best, partner


@njit(cache=True, fastmath=True, parallel=True)
def depth_noise(zc, cos_inc, p, gauss, uni, offs, corr, holes, cell, out):
    """Sensor model over clean depth zc (0 = none). p: see render.DepthNoiseConfig.vector.

    Random numbers are read from the banks at offs[k] + pixel index (the caller keeps that in range).
    """
    h, w = zc.shape
    for y in prange(h):
        for x in range(w):
            i = y * w + x
            z = zc[y, x]
            out[y, x] = 0.0
            if z <= 0 or z < p[0] or z > p[1]:
                continue
            c = cos_inc[y, x]
            if c < p[3]:
                continue
            if c < p[2] and uni[offs[0] + i] < (p[2] - c) / (p[2] - p[3]):
                continue
            if uni[offs[1] + i] < p[4] or _coarse(holes, x, y, cell) > p[5]:
                continue
            jump, partner = _edge_partner(zc, x, y)
            if jump > p[6] + p[7] * z:
                r = uni[offs[2] + i]
                if r < p[8]:
                    z = z + (0.1 + 0.8 * uni[offs[3] + i]) * (partner - z)
                elif r < p[8] + p[9]:
                    continue
            sigma = p[10] + p[11] * (z - 0.4) ** 2
            g = gauss[offs[4] + i]
            z = z + sigma * (p[12] * g + p[13] * _coarse(corr, x, y, cell))
            if p[14] > 0:
                disp = p[14] / z
                z = p[14] / (math.floor(disp * p[15] + 0.5) / p[15])
            out[y, x] = z
