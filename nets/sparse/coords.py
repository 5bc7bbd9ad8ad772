"""Coordinate sets, kernel maps and the kernel-map cache that lets every layer at a level reuse one map.

A coordinate set is an immutable (N,4) int32 tensor of rows (batch, x, y, z) in units of its level's
voxel stride. Each set has a process-unique id; kernel maps and derived sets (downsampled, children)
are cached under keys (input id, output id, stride, kernel size, op kind) in a KernelMapCache shared
by all sets derived from one root set, and dropped when a set is garbage collected.
"""
from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from nets.sparse.hashmap import NumbaCoordHash, SortedCoordIndex, pack_torch, unpack_torch

_UIDS = itertools.count(1)


@dataclass(frozen=True)
class KernelMap:
    """Per kernel offset k, rows in_idx[k] of the input feed rows out_idx[k] of the output.

    identity: the offset whose pairs are (i, i) for every row (submanifold centre), or -1.
    Immutable; any thread.
    """

    in_idx: tuple[torch.Tensor, ...]
    out_idx: tuple[torch.Tensor, ...]
    n_out: int
    identity: int = -1

    @property
    def n_pairs(self) -> int:
        return sum(len(i) for i in self.in_idx)


class KernelMapCache:
    """Cache of kernel maps and derived coordinate sets with build/hit counters. Any single thread."""

    def __init__(self):
        self._items: dict[tuple, object] = {}
        self._by_uid: dict[int, set] = {}
        self.builds = 0
        self.hits = 0

    def get(self, key: tuple, uids: tuple[int, ...], build: Callable[[], object]) -> object:
        """Cached value under key, built once; dropped when any set in uids is forgotten."""
        if key in self._items:
            self.hits += 1
            return self._items[key]
        value = build()
        self.builds += 1
        self._items[key] = value
        for uid in uids:
            self._by_uid.setdefault(uid, set()).add(key)
        return value

    def forget(self, uid: int) -> None:
        """Drop every entry that involves the coordinate set uid."""
        for key in self._by_uid.pop(uid, ()):
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class CoordinateSet:
    """Immutable unique coordinate rows of one level, with a lazily built hash index. Any single thread."""

    def __init__(self, coords: torch.Tensor, stride: int = 1, cache: KernelMapCache | None = None):
        coords = torch.as_tensor(coords)
        if coords.ndim != 2 or coords.shape[1] not in (3, 4):
            raise ValueError(f"coordinates must be (N,3) or (N,4), got {tuple(coords.shape)}")
        if coords.shape[1] == 3:
            coords = torch.cat([coords.new_zeros(len(coords), 1), coords], dim=1)
        self.coords = coords.to(torch.int32).contiguous()
        self.stride = int(stride)
        self.uid = next(_UIDS)
        self.cache = cache if cache is not None else KernelMapCache()
        self._index = None
        weakref.finalize(self, self.cache.forget, self.uid)

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def device(self) -> torch.device:
        return self.coords.device

    def index(self):
        """NumbaCoordHash on CPU, SortedCoordIndex elsewhere (built on first use)."""
        if self._index is None:
            if self.device.type == "cpu":
                self._index = NumbaCoordHash(self.coords.numpy())
            else:
                self._index = SortedCoordIndex(self.coords)
        return self._index

    def derive(self, coords: torch.Tensor, stride: int) -> "CoordinateSet":
        """A new set sharing this set's cache."""
        return CoordinateSet(coords, stride, self.cache)

    def cached(self, other: "CoordinateSet | None", kernel_size: int, kind: str, build) -> object:
        """Cache entry keyed by (self id, other id, stride, kernel size, kind)."""
        uids = (self.uid,) if other is None else (self.uid, other.uid)
        key = (self.uid, None if other is None else other.uid, self.stride, kernel_size, kind)
        return self.cache.get(key, uids, build)


def kernel_offsets(kernel_size: int, pad: int, device=None) -> torch.Tensor:
    """(k^3, 3) int32 offsets d - pad in C order over (x, y, z), matching conv3d weight layout."""
    r = torch.arange(kernel_size, dtype=torch.int32) - pad
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
    return grid.to(device)


def query_hits(table: CoordinateSet, src: CoordinateSet, scale: int, offsets: torch.Tensor) -> torch.Tensor:
    """(K, len(src)) rows of table at scale*src + offset, -1 where absent (int64 tensor)."""
    index = table.index()
    if isinstance(index, NumbaCoordHash):
        hits = index.query_offsets(src.coords.numpy(), scale, offsets.numpy())
        return torch.from_numpy(hits).to(torch.int64)
    return index.query_offsets(src.coords, scale, offsets.to(src.device))


def hits_to_map(hits: torch.Tensor, n_out: int, hits_are_input: bool, identity: int = -1) -> KernelMap:
    """KernelMap from a (K, M) hits table; M rows are outputs (hits_are_input) or inputs."""
    ins, outs = [], []
    for k in range(hits.shape[0]):
        src_rows = torch.nonzero(hits[k] >= 0).squeeze(1)
        found = hits[k, src_rows]
        ins.append(found if hits_are_input else src_rows)
        outs.append(src_rows if hits_are_input else found)
    return KernelMap(tuple(ins), tuple(outs), n_out, identity)


def coarse_pad(kernel_size: int) -> int:
    """Padding of the stride-2 convolution of this kernel size (0 for 2, 1 for 3)."""
    return (kernel_size - 1) // 2


def submanifold_map(cs: CoordinateSet, kernel_size: int) -> KernelMap:
    """Cached map: input rows at out + d - r feed out rows (output sites = input sites)."""
    if kernel_size % 2 != 1:
        raise ValueError("submanifold kernels must have odd size")

    def build():
        offsets = kernel_offsets(kernel_size, kernel_size // 2)
        centre = len(offsets) // 2
        half = hits_to_map(query_hits(cs, cs, 1, offsets[:centre]), len(cs), True)
        # offsets[K-1-k] == -offsets[k]: the mirrored offset's pairs are the swapped pairs
        ident = torch.arange(len(cs), device=cs.device)
        ins = half.in_idx + (ident,) + half.out_idx[::-1]
        outs = half.out_idx + (ident,) + half.in_idx[::-1]
        return KernelMap(ins, outs, len(cs), identity=centre)

    return cs.cached(cs, kernel_size, "submanifold", build)


def downsample(cs: CoordinateSet) -> CoordinateSet:
    """Cached set of unique(floor(coords / 2)) at stride * 2 (sorted by packed key)."""

    def build():
        c = cs.coords.clone()
        c[:, 1:] = torch.div(c[:, 1:], 2, rounding_mode="floor")
        return cs.derive(unpack_torch(torch.unique(pack_torch(c))), cs.stride * 2)

    return cs.cached(None, 2, "downsample", build)


def strided_map(fine: CoordinateSet, coarse: CoordinateSet, kernel_size: int) -> KernelMap:
    """Cached map of the stride-2 conv: fine rows at 2y + d - pad feed coarse row y."""

    def build():
        offsets = kernel_offsets(kernel_size, coarse_pad(kernel_size))
        return hits_to_map(query_hits(fine, coarse, 2, offsets), len(coarse), True)

    return fine.cached(coarse, kernel_size, "strided", build)


def transposed_map(coarse: CoordinateSet, fine: CoordinateSet, kernel_size: int) -> KernelMap:
    """Cached map of the stride-2 transposed conv: coarse row y feeds fine rows at 2y + d - pad."""

    def build():
        offsets = kernel_offsets(kernel_size, coarse_pad(kernel_size))
        return hits_to_map(query_hits(fine, coarse, 2, offsets), len(fine), False)

    return coarse.cached(fine, kernel_size, "transposed", build)


def children(cs: CoordinateSet, kernel_size: int = 2) -> CoordinateSet:
    """Cached set of unique(2y + d - pad) over the kernel: the finer sites each coarse site spawns."""
    if cs.stride % 2:
        raise ValueError("a stride-1 set has no finer level")

    def build():
        offsets = kernel_offsets(kernel_size, coarse_pad(kernel_size), cs.device)
        base = cs.coords.clone()
        base[:, 1:] *= 2
        rows = (base[None] + torch.nn.functional.pad(offsets, (1, 0))[:, None]).reshape(-1, 4)
        return cs.derive(unpack_torch(torch.unique(pack_torch(rows))), cs.stride // 2)

    return cs.cached(None, kernel_size, "children", build)


def dilated(cs: CoordinateSet, kernel_size: int = 3) -> CoordinateSet:
    """Cached set of unique(y + d - k//2) over an odd kernel: the sites a same-level generative conv creates."""
    if kernel_size % 2 != 1:
        raise ValueError("dilation kernels must have odd size")

    def build():
        offsets = kernel_offsets(kernel_size, kernel_size // 2, cs.device)
        rows = (cs.coords[None] + torch.nn.functional.pad(offsets, (1, 0))[:, None]).reshape(-1, 4)
        return cs.derive(unpack_torch(torch.unique(pack_torch(rows))), cs.stride)

    return cs.cached(None, kernel_size, "dilated", build)


def dilation_map(cs: CoordinateSet, out: CoordinateSet, kernel_size: int) -> KernelMap:
    """Cached map of the same-level generative conv: input rows at o + d - k//2 feed out row o (conv3d)."""

    def build():
        offsets = kernel_offsets(kernel_size, kernel_size // 2)
        return hits_to_map(query_hits(cs, out, 1, offsets), len(out), True)

    return cs.cached(out, kernel_size, "dilation", build)


def select(cs: CoordinateSet, keep: torch.Tensor) -> CoordinateSet:
    """A new set holding the rows where keep is true (not cached: keep is data dependent)."""
    return cs.derive(cs.coords[keep], cs.stride)


