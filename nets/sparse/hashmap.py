"""Coordinate hash tables: a numba open-addressing hash (CPU) and a sorted-key index (torch, any device).

Coordinates are rows (batch, x, y, z) of int32. They are packed into one non-negative int64 key:
batch in 12 bits, x/y/z in 17 bits each (offset by 2**16, so -65536 <= x < 65536). Rows outside that
range are never stored and are reported absent by lookups.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

BATCH_BITS = 12
AXIS_BITS = 17
AXIS_OFFSET = 1 << (AXIS_BITS - 1)
AXIS_MASK = (1 << AXIS_BITS) - 1
MAX_BATCH = 1 << BATCH_BITS
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(inline="always", cache=True, nogil=True)
def _pack(b, x, y, z):
    """Packed key of one row, or -1 where the row is outside the packable range."""
    if b < 0 or b >= MAX_BATCH:
        return np.int64(-1)
    xo = np.int64(x) + AXIS_OFFSET
    yo = np.int64(y) + AXIS_OFFSET
    zo = np.int64(z) + AXIS_OFFSET
    if xo < 0 or xo > AXIS_MASK or yo < 0 or yo > AXIS_MASK or zo < 0 or zo > AXIS_MASK:
        return np.int64(-1)
    return (np.int64(b) << (3 * AXIS_BITS)) | (xo << (2 * AXIS_BITS)) | (yo << AXIS_BITS) | zo


@numba.njit(inline="always", cache=True, nogil=True)
def _slot(key, shift):
    """High bits of a multiplicative (Fibonacci) hash: the low bits cluster on grid keys."""
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(shift))


@numba.njit(cache=True, nogil=True)
def _build(coords, bits):
    """Open-addressing table (keys, values) for coords (N,4); returns also the first duplicate row or -1."""
    size = np.int64(1) << bits
    mask = size - 1
    shift = 64 - bits
    keys = np.full(size, -1, np.int64)
    vals = np.full(size, -1, np.int32)
    for i in range(coords.shape[0]):
        key = _pack(coords[i, 0], coords[i, 1], coords[i, 2], coords[i, 3])
        if key < 0:
            return keys, vals, i
        s = _slot(key, shift)
        while keys[s] != -1:
            if keys[s] == key:
                return keys, vals, i
            s = (s + 1) & mask
        keys[s] = key
        vals[s] = i
    return keys, vals, -1


@numba.njit(inline="always", cache=True, nogil=True)
def _find(keys, vals, shift, mask, key):
    if key < 0:
        return np.int32(-1)
    s = _slot(key, shift)
    while True:
        k = keys[s]
        if k == key:
            return vals[s]
        if k == -1:
            return np.int32(-1)
        s = (s + 1) & mask


@numba.njit(cache=True, nogil=True)
def _lookup(keys, vals, bits, coords):
    shift = 64 - bits
    mask = (np.int64(1) << bits) - 1
    out = np.empty(coords.shape[0], np.int32)
    for i in range(coords.shape[0]):
        key = _pack(coords[i, 0], coords[i, 1], coords[i, 2], coords[i, 3])
        out[i] = _find(keys, vals, shift, mask, key)
    return out


@numba.njit(cache=True, nogil=True)
def _query_offsets(keys, vals, bits, src, scale, offsets):
    """hits[k, j] = row of (b, scale*src[j] + offsets[k]) in the table, or -1."""
    shift = 64 - bits
    mask = (np.int64(1) << bits) - 1
    n, kn = src.shape[0], offsets.shape[0]
    hits = np.empty((kn, n), np.int32)
    for j in range(n):
        b = src[j, 0]
        x, y, z = scale * src[j, 1], scale * src[j, 2], scale * src[j, 3]
        for k in range(kn):
            key = _pack(b, x + offsets[k, 0], y + offsets[k, 1], z + offsets[k, 2])
            hits[k, j] = _find(keys, vals, shift, mask, key)
    return hits


class NumbaCoordHash:
    """Open-addressing hash from coordinate rows to row indices (CPU). Any single thread."""

    def __init__(self, coords: np.ndarray, load_factor: float = 0.5):
        coords = np.ascontiguousarray(coords, dtype=np.int32)
        self.size = len(coords)
        self.bits = max(4, int(np.ceil(np.log2(max(1, self.size) / load_factor))))
        self.keys, self.vals, bad = _build(coords, self.bits)
        if bad >= 0:
            raise ValueError(f"coordinate row {bad} is duplicated or out of range: {coords[bad]}")

    def lookup(self, coords: np.ndarray) -> np.ndarray:
        """Row index of each query row (M,4), -1 where absent."""
        return _lookup(self.keys, self.vals, self.bits, np.ascontiguousarray(coords, dtype=np.int32))

    def query_offsets(self, src: np.ndarray, scale: int, offsets: np.ndarray) -> np.ndarray:
        """(K, M) rows of scale*src + offsets[k] (batch kept), -1 where absent."""
        src = np.ascontiguousarray(src, dtype=np.int32)
        offs = np.ascontiguousarray(offsets, dtype=np.int32)
        return _query_offsets(self.keys, self.vals, self.bits, src, np.int32(scale), offs)


def pack_torch(coords: torch.Tensor) -> torch.Tensor:
    """Packed int64 keys of (M,4) rows; -1 for rows outside the packable range."""
    c = coords.to(torch.int64)
    b, xyz = c[:, 0], c[:, 1:] + AXIS_OFFSET
    valid = (b >= 0) & (b < MAX_BATCH) & ((xyz >= 0) & (xyz <= AXIS_MASK)).all(dim=1)
    key = (b << (3 * AXIS_BITS)) | (xyz[:, 0] << (2 * AXIS_BITS)) | (xyz[:, 1] << AXIS_BITS) | xyz[:, 2]
    return torch.where(valid, key, torch.full_like(key, -1))


def unpack_torch(keys: torch.Tensor) -> torch.Tensor:
    """(M,4) int32 rows of packed keys."""
    cols = [keys >> (3 * AXIS_BITS)] + [((keys >> (s * AXIS_BITS)) & AXIS_MASK) - AXIS_OFFSET for s in (2, 1, 0)]
    return torch.stack(cols, dim=1).to(torch.int32)


class SortedCoordIndex:
    """Coordinate lookup by sort + searchsorted in torch (works on CUDA). Any single thread."""

    def __init__(self, coords: torch.Tensor):
        keys = pack_torch(coords)
        if len(keys) and bool((keys < 0).any()):
            raise ValueError("coordinate rows out of the packable range")
        self.sorted, self.perm = torch.sort(keys)
        if len(keys) > 1 and bool((self.sorted[1:] == self.sorted[:-1]).any()):
            raise ValueError("duplicated coordinate rows")
        self.size = len(keys)

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """Row index of each query row (M,4), -1 where absent (int64, on the index's device)."""
        q = pack_torch(coords)
        if self.size == 0:
            return torch.full_like(q, -1)
        pos = torch.searchsorted(self.sorted, q).clamp_(max=self.size - 1)
        hit = (self.sorted[pos] == q) & (q >= 0)
        return torch.where(hit, self.perm[pos], torch.full_like(q, -1))

    def query_offsets(self, src: torch.Tensor, scale: int, offsets: torch.Tensor) -> torch.Tensor:
        """(K, M) rows of scale*src + offsets[k] (batch kept), -1 where absent."""
        base = src.to(torch.int64).clone()
        base[:, 1:] *= scale
        rows = [self.lookup(base + torch.cat([offsets.new_zeros(1), o]).to(base)) for o in offsets]
        return torch.stack(rows) if rows else base.new_empty((0, len(src)))
