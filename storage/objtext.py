"""Owns fast text for OBJ files: vertex and face lines formatted by numba into a byte buffer.

`np.savetxt` formats row by row in Python (seconds for a room-sized mesh); these kernels write the
same lines (`v x y z r g b` with fixed decimals, `f a b c` with 1-based indices) in one pass.
Decimals are rounded half away from zero, which can differ from printf's `%.6f` in the last digit
of exact ties only. Pure functions: any thread.
"""
from __future__ import annotations

import numba as nb
import numpy as np

_MAX_INT_DIGITS = 19  # int64


@nb.njit(cache=True, nogil=True)
def _put_uint(buf, pos, v):
    n = 1
    t = v
    while t >= 10:
        t //= 10
        n += 1
    for i in range(n - 1, -1, -1):
        buf[pos + i] = 48 + v % 10
        v //= 10
    return pos + n


@nb.njit(cache=True, nogil=True)
def _put_fixed(buf, pos, x, decimals, scale):
    neg = x < 0.0
    q = np.int64(np.floor(abs(x) * scale + 0.5))
    if neg and q > 0:
        buf[pos] = 45  # '-'
        pos += 1
    pos = _put_uint(buf, pos, q // scale)
    buf[pos] = 46  # '.'
    pos += 1
    frac = q % scale
    for i in range(decimals - 1, -1, -1):
        buf[pos + i] = 48 + frac % 10
        frac //= 10
    return pos + decimals


@nb.njit(cache=True, nogil=True)
def _vertex_lines(xyz, rgb, xyz_decimals, rgb_decimals):
    n = xyz.shape[0]
    width = 2 + 3 * (_MAX_INT_DIGITS + 3 + xyz_decimals) + 3 * (3 + rgb_decimals) + 1
    buf = np.empty(n * width, np.uint8)
    s_xyz, s_rgb = np.int64(10) ** xyz_decimals, np.int64(10) ** rgb_decimals
    pos = 0
    for i in range(n):
        buf[pos] = 118  # 'v'
        pos += 1
        for j in range(3):
            buf[pos] = 32
            pos = _put_fixed(buf, pos + 1, xyz[i, j], xyz_decimals, s_xyz)
        for j in range(3):
            buf[pos] = 32
            pos = _put_fixed(buf, pos + 1, rgb[i, j], rgb_decimals, s_rgb)
        buf[pos] = 10
        pos += 1
    return buf[:pos]


@nb.njit(cache=True, nogil=True)
def _face_lines(faces):
    n = faces.shape[0]
    buf = np.empty(n * (2 + 3 * (_MAX_INT_DIGITS + 1)), np.uint8)
    pos = 0
    for i in range(n):
        buf[pos] = 102  # 'f'
        pos += 1
        for j in range(3):
            buf[pos] = 32
            pos = _put_uint(buf, pos + 1, np.int64(faces[i, j]) + 1)
        buf[pos] = 10
        pos += 1
    return buf[:pos]


def vertex_lines(positions_m: np.ndarray, colors_01: np.ndarray, xyz_decimals: int = 6, rgb_decimals: int = 4) -> bytes:
    """`v x y z r g b` lines (positions in metres, colours in 0..1)."""
    xyz = np.ascontiguousarray(positions_m, np.float64).reshape(-1, 3)
    rgb = np.ascontiguousarray(colors_01, np.float64).reshape(-1, 3)
    if not (np.isfinite(xyz).all() and np.isfinite(rgb).all()):
        raise ValueError("vertex positions and colours must be finite")
    return _vertex_lines(xyz, rgb, xyz_decimals, rgb_decimals).tobytes()


def face_lines(faces: np.ndarray) -> bytes:
    """`f a b c` lines with 1-based vertex indices from 0-based (N,3) faces."""
    f = np.ascontiguousarray(faces, np.int64).reshape(-1, 3)
    if len(f) and f.min() < 0:
        raise ValueError("face indices must be >= 0")
    return _face_lines(f).tobytes()
