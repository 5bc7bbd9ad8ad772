"""Owns incremental meshing: per-block surface meshes, re-extracted only where blocks changed.

A frame's touched blocks and their 26 neighbours (whose cells read the touched voxels) become pending;
each update re-meshes at most `max_blocks_per_update` of them: blocks without a mesh first, then the
ones that waited longest, and a block still being scanned at most once in `min_interval_updates`
updates (it changes a little every frame; re-meshing it every frame is wasted work). Cost follows the
changed area and has a ceiling whatever the view; `flush` meshes everything pending.
Chunks (cubes of `chunk_blocks`^3 blocks) group block meshes for display; the whole mesh is the union
of block meshes with shared vertices merged. The chunk grid is offset by half a chunk from the world
origin (`chunk_offset_blocks`), so the floor of a gravity-aligned world (z = 0) and surfaces on the
origin's planes lie inside chunks, not along their faces, where the display's simplified surface must
keep every vertex that two chunks share.
"""
from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fusion.surface_nets import mesh_blocks
from fusion.volume import TsdfVolume

log = logging.getLogger(__name__)

NEIGHBOUR_OFFSETS = np.array(
    [(dx, dy, dz) for dz, dy, dx in itertools.product((-1, 0, 1), repeat=3)], np.int32
)  # index (dz+1)*9 + (dy+1)*3 + (dx+1), the order the kernel expects


@dataclass(frozen=True)
class MeshConfig:
    weight_min: float = 1.0      #: voxels observed with less integration weight are treated as unknown
    chunk_blocks: int = 4        #: chunk edge in blocks (display / dirty-chunk granularity)
    chunk_offset_blocks: int = 2  #: chunk k spans blocks k * chunk_blocks - this offset onwards
    threads: int = 2             #: kernel threads (the kernel releases the GIL)
    max_blocks_per_update: int = 768  #: re-meshed per update at most (blocks without a mesh first); 0 = all
    min_interval_updates: int = 4     #: a block with a mesh is re-meshed at most once in this many updates


@dataclass(frozen=True)
class MeshArrays:
    """An immutable triangle mesh: positions metres, uint8 colours, unit normals, int32 faces."""

    positions_m: np.ndarray
    colors: np.ndarray
    normals: np.ndarray
    faces: np.ndarray
    vertex_keys: np.ndarray

    @staticmethod
    def empty() -> "MeshArrays":
        return MeshArrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8),
                          np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros(0, np.int64))


def pack_keys(keys: np.ndarray) -> np.ndarray:
    """Integer grid coordinates (N,3) (blocks here, the nets' cells too) -> one int64 each (21 bits an axis),
    order-preserving per axis."""
    k = np.asarray(keys, np.int64).reshape(-1, 3) + (1 << 20)
    return (k[:, 0] << 42) | (k[:, 1] << 21) | k[:, 2]


def unpack_keys(packed: np.ndarray) -> np.ndarray:
    mask = (1 << 21) - 1
    p = np.asarray(packed, np.int64)
    return (np.stack([p >> 42, (p >> 21) & mask, p & mask], 1) - (1 << 20)).astype(np.int32)


def find_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row of each of `keys` in the ascending array `sorted_keys`, -1 where absent (a sorted search:
    numpy's set functions on int64 keys are several times slower here)."""
    keys = np.asarray(keys)
    if not len(sorted_keys):
        return np.full(len(keys), -1, np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == keys, at, -1)


def border_axes(vertex_keys: np.ndarray, start_voxel: np.ndarray, chunk_voxels: int) -> np.ndarray:
    """(N,) uint8 per vertex of a chunk's mesh (the chunk's voxels start at `start_voxel`, (3,)): bit i set
    where it lies in a surface-nets cell (the vertex keys are global cell indices) one voxel below either
    face of the chunk across axis i, which the neighbouring chunk across that face may use too."""
    cells = unpack_keys(np.asarray(vertex_keys, np.int64))
    start = np.asarray(start_voxel, np.int64)
    on = (cells == start - 1) | (cells == start + chunk_voxels - 1)
    return (on[:, 0] | (on[:, 1] << 1) | (on[:, 2] << 2)).astype(np.uint8)


def border_vertices(vertex_keys: np.ndarray, start_voxel: np.ndarray, chunk_voxels: int) -> np.ndarray:
    """Vertices of a chunk's mesh that a neighbouring chunk's mesh may share (see border_axes)."""
    return border_axes(vertex_keys, start_voxel, chunk_voxels) > 0


def concat_meshes(parts: list[MeshArrays], merge: bool) -> MeshArrays:
    """Concatenate meshes; with merge, vertices with equal keys become one."""
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        return MeshArrays.empty()
    offsets = np.cumsum([0] + [len(p.positions_m) for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets)])
    pos, col, nrm, keys = (np.concatenate([getattr(p, f) for p in parts])
                           for f in ("positions_m", "colors", "normals", "vertex_keys"))
    if merge:
        keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        pos, col, nrm = pos[first], col[first], nrm[first]
        faces = inverse[faces].astype(np.int32)
    return MeshArrays(pos, col, nrm, faces.astype(np.int32), keys)


class ChunkMesher:
    """Per-block meshes of a TsdfVolume, updated from touched blocks.

    Thread: the fusion thread calls `update`; `chunk_mesh`/`full_mesh` return immutable copies that
    may be handed to other threads.
    """

    def __init__(self, volume: TsdfVolume, config: MeshConfig = MeshConfig()):
        self.volume = volume
        self.config = config
        self.chunks: dict[tuple, dict[tuple, MeshArrays]] = {}  # chunk key -> block key -> block mesh
        self._pending: dict[int, int] = {}  # packed key of a block waiting to be re-meshed -> update it got dirty
        self._meshed_at: dict[int, int] = {}  # packed key -> update it was last meshed in
        self._updates = 0
        self._pool = ThreadPoolExecutor(config.threads) if config.threads > 1 else None

    def affected_blocks(self, touched: np.ndarray) -> np.ndarray:
        """Touched blocks plus their allocated neighbours, unique (N,3) int32, touched ones first."""
        if len(touched) == 0:
            return np.zeros((0, 3), np.int32)
        first = np.unique(pack_keys(touched))
        ring = np.setdiff1d(pack_keys((touched[:, None, :] + NEIGHBOUR_OFFSETS[None]).reshape(-1, 3)), first)
        cand = unpack_keys(np.concatenate([first, ring]))
        return cand[self.volume.lookup(cand) >= 0]

    @property
    def pending_blocks(self) -> int:
        return len(self._pending)

    def queue(self, touched_blocks: np.ndarray) -> None:
        """Mark what `touched_blocks` changed for re-meshing by the next updates (meshes nothing now)."""
        for k in pack_keys(self.affected_blocks(np.asarray(touched_blocks, np.int32))).tolist():
            self._pending.setdefault(k, self._updates)

    def update(self, touched_blocks: np.ndarray) -> set:
        """Re-mesh what `touched_blocks` changed (within the budget); return the chunk keys whose mesh changed."""
        self._updates += 1
        now = self._updates
        self.queue(touched_blocks)
        ready = [k for k in self._pending
                 if now - self._meshed_at.get(k, -10**9) >= self.config.min_interval_updates]
        ready.sort(key=lambda k: (k in self._meshed_at, self._pending[k]))
        take = ready[: self.config.max_blocks_per_update or len(ready)]
        return self._mesh_packed(take)

    def flush(self) -> set:
        """Re-mesh every pending block; return the chunk keys whose mesh changed."""
        return self._mesh_packed(sorted(self._pending))

    def _mesh_packed(self, packed: list) -> set:
        for k in packed:
            del self._pending[k]
            self._meshed_at[k] = self._updates
        return self._mesh(unpack_keys(np.array(packed, np.int64))) if packed else set()

    def _mesh(self, keys: np.ndarray) -> set:
        nbr = self.volume.lookup((keys[:, None, :] + NEIGHBOUR_OFFSETS[None]).reshape(-1, 3)).reshape(-1, 27)
        allocated = nbr[:, 13] >= 0  # offset (0,0,0): the block itself
        keys, nbr = keys[allocated], nbr[allocated]
        if len(keys) == 0:
            return set()
        (tsdf, weight, color), nbr = self.volume.host_voxels(nbr)
        r, vsize = self.volume.config.block_resolution, self.volume.config.voxel_size_m
        parts = np.array_split(np.arange(len(keys)), max(1, min(self.config.threads, len(keys) // 64)))
        run = lambda idx: (idx, mesh_blocks(tsdf, weight, color, nbr[idx], keys[idx], r, vsize,  # noqa: E731
                                            self.config.weight_min))
        results = list(self._pool.map(run, parts)) if self._pool and len(parts) > 1 else [run(parts[0])]
        chunk_of = self.chunk_of_blocks(keys)
        for idx, (V, C, N, K, F, voff, foff) in results:
            for m, (key, chunk) in enumerate(zip(map(tuple, keys[idx]), map(tuple, chunk_of[idx]))):
                v0, v1, f0, f1 = voff[m], voff[m + 1], foff[m], foff[m + 1]
                blocks = self.chunks.setdefault(chunk, {})
                if f1 > f0:  # copies: a view would keep the whole batch (and its spare capacity) alive
                    blocks[key] = MeshArrays(V[v0:v1].copy(), C[v0:v1].copy(), N[v0:v1].copy(), F[f0:f1].copy(),
                                             K[v0:v1].copy())
                else:
                    blocks.pop(key, None)
        return set(map(tuple, chunk_of))

    def chunk_of_blocks(self, block_keys: np.ndarray) -> np.ndarray:
        """(N,3) int64 chunk key of each block key."""
        return np.floor_divide(np.asarray(block_keys, np.int64) + self.config.chunk_offset_blocks, self.config.chunk_blocks)

    def chunk_first_block(self, chunk_key) -> np.ndarray:
        """(3,) int64 block key of a chunk's lowest corner."""
        return np.asarray(chunk_key, np.int64) * self.config.chunk_blocks - self.config.chunk_offset_blocks

    def chunk_bounds_m(self, chunk_keys) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) (N,3) metres of chunks."""
        lo = self.chunk_first_block(np.asarray(chunk_keys, np.int64).reshape(-1, 3)) * self.volume.config.block_size_m
        return lo, lo + self.config.chunk_blocks * self.volume.config.block_size_m

    def chunk_mesh(self, chunk_key: tuple) -> MeshArrays:
        """The mesh of one chunk (block meshes concatenated, shared vertices merged)."""
        return concat_meshes(list(self.chunks.get(tuple(chunk_key), {}).values()), merge=True)

    def shared_vertices(self, chunk_key: tuple, vertex_keys: np.ndarray) -> np.ndarray:
        """True for each vertex of a chunk's mesh (by key) that a neighbouring chunk's mesh uses too (see
        seam_axes)."""
        return self.seam_axes(chunk_key, vertex_keys) > 0

    def seam_axes(self, chunk_key: tuple, vertex_keys: np.ndarray) -> np.ndarray:
        """(N,) uint8 per vertex of a chunk's mesh (by key): for a vertex a neighbouring chunk's mesh uses too
        (a border vertex found in the block meshes of neighbouring chunks that touch the chunk) the axes of
        the chunk faces it lies on (`border_axes`), 0 for the others. A surface lying along a chunk face has
        all its vertices on the border, but shares only the line where it meets surfaces of the next chunk.
        Every chunk sharing a vertex gives it the same value, so a vertex shared along an edge or a corner is
        told from one shared across a face."""
        cb, r = self.config.chunk_blocks, self.volume.config.block_resolution
        lo = self.chunk_first_block(chunk_key)
        axes = border_axes(vertex_keys, lo * r, cb * r)
        border = axes > 0
        if not border.any():
            return axes
        cells = unpack_keys(np.asarray(vertex_keys, np.int64)[border])
        # per axis, the neighbours' blocks along the chunk's low face, inside it, along its high face
        # (a side only where border vertices lie on it)
        spans = [[[lo[i] - 1]] * bool(np.any(cells[:, i] == lo[i] * r - 1)) + [list(range(lo[i], lo[i] + cb))]
                 + [[lo[i] + cb]] * bool(np.any(cells[:, i] == (lo[i] + cb) * r - 1)) for i in range(3)]
        near = [m.vertex_keys for sx, sy, sz in itertools.product(*spans) if len(sx) + len(sy) + len(sz) < 3 * cb
                for b in itertools.product(sx, sy, sz) for m in [self._block_mesh(b)] if m is not None]
        if not near:
            return np.zeros_like(axes)
        border[border] = find_sorted(np.sort(np.concatenate(near)), np.asarray(vertex_keys, np.int64)[border]) >= 0
        return np.where(border, axes, 0).astype(np.uint8)

    def _block_mesh(self, block_key: tuple) -> MeshArrays | None:
        c, o = self.config.chunk_blocks, self.config.chunk_offset_blocks
        return self.chunks.get(tuple((int(b) + o) // c for b in block_key), {}).get(block_key)

    def full_mesh(self) -> MeshArrays:
        """The whole surface: the union of all block meshes with shared vertices merged."""
        return concat_meshes([m for blocks in self.chunks.values() for m in blocks.values()], merge=True)

    def reset(self) -> None:
        self.chunks.clear()
        self._pending.clear()
        self._meshed_at.clear()

    def adopt(self, other: "ChunkMesher") -> set:
        """Take `other`'s block meshes (meshed for a volume this mesher's volume adopted) and close it;
        returns every chunk key whose mesh changed (old and new). Blocks still pending there are re-meshed
        by this mesher's next updates, within its budget."""
        changed = set(self.chunks) | set(other.chunks)
        self.reset()
        self.chunks.update(other.chunks)
        self._pending = dict.fromkeys(other._pending, self._updates)
        other.close()
        return changed

    def close(self) -> None:
        """Stop the kernel threads; safe to call twice."""
        if self._pool:
            self._pool.shutdown(wait=True)
            self._pool = None
