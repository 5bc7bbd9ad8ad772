"""Owns the completion store: geometry the nets predict where nothing was observed, per chunk, and its mesh.

Each chunk keeps the generated sites (not input sites) of its latest prediction: coarse cell, predicted
signed distance (coarse voxels) and NYU40 label. A re-inferred chunk replaces its entry wholesale, so
space that has been observed since drops its completion (observed sites are never stored here).
`mesh()` extracts the zero level set of the generated sites' signed distances with the project's
surface-nets kernel, one 32^3 "block" per chunk, vertices coloured with the ScanNet palette.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from fusion.classes import palette_lut
from fusion.coarse import CoarseGridConfig
from fusion.meshing import NEIGHBOUR_OFFSETS, MeshArrays, concat_meshes, find_sorted
from fusion.surface_nets import mesh_blocks
from nets.cells import CLASS_IDS, group_by_chunk, pack_cells

PREFIX = "completion_"   #: prefix of the arrays `to_arrays` returns


@dataclass(frozen=True)
class CompletionConfig:
    """Which generated sites are kept and how their surface is extracted."""

    max_empty_prob: float = 0.5     #: generated sites more likely empty than this are dropped
    sdf_scale_voxels: float = 3.0   #: signed distances are divided by this for the mesher (|d| >= it: unknown)


@dataclass(frozen=True)
class _Sites:
    coords: np.ndarray   # (K,3) int32 global cells
    sdf_vox: np.ndarray  # (K,) float32
    label: np.ndarray    # (K,) uint16 NYU40


@dataclass(frozen=True)
class CompletedMesh:
    """The completion layer (immutable): a mesh plus per-vertex NYU40 labels."""

    mesh: MeshArrays
    labels: np.ndarray   #: (V,) uint16


class CompletionStore:
    """Predicted geometry of unobserved space. Thread-safe: the nets thread fuses, any thread meshes
    (chunk entries are immutable; a short lock guards the table)."""

    def __init__(self, grid: CoarseGridConfig = CoarseGridConfig(), config: CompletionConfig = CompletionConfig()):
        self.grid = grid
        self.config = config
        self._lock = threading.Lock()
        self._chunks: dict[tuple, _Sites] = {}
        self._version = 0
        self._cache: tuple[int, CompletedMesh] | None = None

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def fuse(self, pred) -> set:
        """Replace the chunks of `pred.keys` with its generated sites; returns the chunk keys that changed."""
        gen = ~np.asarray(pred.observed, bool) & (np.asarray(pred.empty_prob) <= self.config.max_empty_prob)
        coords = np.asarray(pred.coords, np.int32)[gen]
        sdf = np.asarray(pred.sdf_vox, np.float32)[gen]
        label = CLASS_IDS[np.asarray(pred.probs)[gen].argmax(1)] if gen.any() else np.zeros(0, np.uint16)
        groups = dict(group_by_chunk(coords, self.grid.chunk_voxels))
        changed = set()
        with self._lock:
            for key in map(tuple, pred.keys):
                sel = groups.get(key)
                if sel is None:
                    if self._chunks.pop(key, None) is not None:
                        changed.add(key)
                    continue
                self._chunks[key] = _Sites(coords[sel], sdf[sel], label[sel].astype(np.uint16))
                changed.add(key)
            if changed:
                self._version += 1
        return changed

    def clear(self) -> None:
        with self._lock:
            if self._chunks:
                self._chunks.clear()
                self._version += 1

    def chunk_keys(self) -> set:
        """Keys of the chunks holding predicted sites."""
        with self._lock:
            return set(self._chunks)

    def n_sites(self) -> int:
        with self._lock:
            return sum(len(s.coords) for s in self._chunks.values())

    # --- meshing -------------------------------------------------------------------------------
    def mesh(self) -> CompletedMesh:
        """Surface of the generated sites (metres) with per-vertex NYU40 labels; cached per version."""
        with self._lock:
            version, chunks = self._version, dict(self._chunks)
            if self._cache is not None and self._cache[0] == version:
                return self._cache[1]
        result = self._extract(chunks)
        with self._lock:
            self._cache = (version, result)
        return result

    def _extract(self, chunks: dict) -> CompletedMesh:
        if not chunks:
            return CompletedMesh(MeshArrays.empty(), np.zeros(0, np.uint16))
        n, v = self.grid.chunk_voxels, self.grid.voxel_size_m
        keys = np.array(list(chunks), np.int32)
        row = {k: i for i, k in enumerate(chunks)}
        tsdf = np.zeros((len(keys), n, n, n), np.float32)
        weight = np.zeros_like(tsdf)
        color = np.zeros((*tsdf.shape, 3), np.float32)
        lut = palette_lut().astype(np.float32)
        for b, sites in enumerate(chunks.values()):
            x, y, z = (sites.coords - keys[b] * n).T
            tsdf[b, z, y, x] = np.clip(sites.sdf_vox / self.config.sdf_scale_voxels, -0.999, 0.999)
            weight[b, z, y, x] = 1.0
            color[b, z, y, x] = lut[np.minimum(sites.label, len(lut) - 1)]
        nbr = np.array([[row.get(tuple(k + o), -1) for o in NEIGHBOUR_OFFSETS] for k in keys], np.int64)
        V, C, N, K, F, voff, foff = mesh_blocks(tsdf, weight, color, nbr, keys, n, v, 0.5)
        parts = [MeshArrays(V[voff[m]:voff[m + 1]] + np.float32(0.5 * v), C[voff[m]:voff[m + 1]],
                            N[voff[m]:voff[m + 1]], F[foff[m]:foff[m + 1]], K[voff[m]:voff[m + 1]])
                 for m in range(len(keys))]
        mesh = concat_meshes(parts, merge=True)
        return CompletedMesh(mesh, self._vertex_labels(chunks, mesh.positions_m))

    def _vertex_labels(self, chunks: dict, positions_m: np.ndarray) -> np.ndarray:
        """Label of the nearest generated site among the 8 around each vertex."""
        if not len(positions_m):
            return np.zeros(0, np.uint16)
        coords = np.concatenate([s.coords for s in chunks.values()])
        labels = np.concatenate([s.label for s in chunks.values()])
        order = np.argsort(pack_cells(coords))
        packed, labels = pack_cells(coords)[order], labels[order]
        g = positions_m.astype(np.float64) / self.grid.voxel_size_m - 0.5  # in cell-centre units
        base = np.floor(g).astype(np.int32)
        corners = np.array([(i & 1, (i >> 1) & 1, (i >> 2) & 1) for i in range(8)], np.int32)
        cand = base[:, None, :] + corners[None]
        dist = np.linalg.norm(cand - g[:, None, :], axis=2)
        pos = find_sorted(packed, pack_cells(cand.reshape(-1, 3))).reshape(-1, 8)
        dist[pos < 0] = np.inf
        best = dist.argmin(1)
        out = labels[pos[np.arange(len(g)), best]]
        return np.where(np.isfinite(dist.min(1)), out, 0).astype(np.uint16)

    # --- persistence ---------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays (prefix `completion_`) that `from_arrays` restores; for session extras."""
        with self._lock:
            sites = list(self._chunks.values())
        empty = {"coords": np.zeros((0, 3), np.int32), "sdf_vox": np.zeros(0, np.float32),
                 "label": np.zeros(0, np.uint16)}
        return {f"{PREFIX}{f}": np.concatenate([getattr(s, f) for s in sites]) if sites else e
                for f, e in empty.items()}

    @classmethod
    def from_arrays(cls, arrays: dict, grid: CoarseGridConfig = CoarseGridConfig(),
                    config: CompletionConfig = CompletionConfig()) -> "CompletionStore":
        """A store from `to_arrays` output (ValueError when arrays are missing)."""
        store = cls(grid, config)
        try:
            coords = np.asarray(arrays[f"{PREFIX}coords"], np.int32).reshape(-1, 3)
            sdf = np.asarray(arrays[f"{PREFIX}sdf_vox"], np.float32).reshape(len(coords))
            label = np.asarray(arrays[f"{PREFIX}label"], np.uint16).reshape(len(coords))
        except KeyError as exc:
            raise ValueError(f"completion arrays lack {exc}") from None
        store._chunks = {key: _Sites(coords[sel], sdf[sel], label[sel])
                         for key, sel in group_by_chunk(coords, grid.chunk_voxels)}
        store._version = 1
        return store
