"""Owns reading the label store: a `LabelView` is one immutable snapshot of its chunks and answers every
lookup (labels and probabilities of cells, labels of points and mesh vertices, brush and connected-region
selections, counts). Chunks are never changed in place (the store swaps in new ones), so a view stays
consistent while the store changes, and any thread may call it. `nets.labels.LabelStore` takes one under
its short lock for each lookup.
"""
from __future__ import annotations

import numpy as np

from fusion.coarse import CoarseGridConfig
from nets.cells import CLASS_IDS, NEIGHBOURS26, NO_CORRECTION, class_columns, group_by_chunk, pack_cells, rows_of, unpack_cells
from nets.segment_vote import SegmentVoteConfig, surface_segments, vote
from nets.vertex_labels import point_labels

_OFFSETS6 = np.array([(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)], np.int32)


class LabelView:
    """Lookups over one snapshot of the store's chunks ({chunk key: `nets.cells.ChunkCells`}); `config` is
    the store's `LabelStoreConfig`. Immutable: any thread may call it."""

    def __init__(self, chunks: dict, grid: CoarseGridConfig, config):
        self.chunks, self.grid, self.config = chunks, grid, config

    def cells_at(self, points_m) -> np.ndarray:
        """(N,3) int32 cell containing each point (metres)."""
        p = np.asarray(points_m, np.float64).reshape(-1, 3)
        return np.floor(p / self.grid.voxel_size_m).astype(np.int32)

    def _found(self, cells: np.ndarray):
        """Yield (chunk, positions in `cells`, rows in the chunk) for the cells the view holds."""
        n = self.grid.chunk_voxels
        for key, sel in group_by_chunk(cells, n):
            chunk = self.chunks.get(key)
            if chunk is None:
                continue
            rows = rows_of(chunk, key, n, cells[sel])
            yield chunk, sel[rows >= 0], rows[rows >= 0]

    def labels_of_cells(self, cells) -> tuple[np.ndarray, np.ndarray]:
        """(label uint16, confidence float32) of each cell ((N,3) int); (0, 0) where the view has none."""
        cells = np.asarray(cells, np.int32).reshape(-1, 3)
        label, conf = np.zeros(len(cells), np.uint16), np.zeros(len(cells), np.float32)
        for chunk, sel, rows in self._found(cells):
            label[sel], conf[sel] = chunk.label[rows], chunk.conf[rows]
        return label, conf

    def cell_probs(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probs (N,C), present (N,) bool, corrected (N,) uint16) of each cell: a corrected cell's
        probabilities are one-hot in its class, the class shown gets the switch margin (so a cell's own
        centre keeps the label it shows)."""
        probs = np.zeros((len(cells), len(CLASS_IDS)), np.float32)
        present = np.zeros(len(cells), bool)
        corrected = np.full(len(cells), NO_CORRECTION, np.uint16)
        for chunk, sel, rows in self._found(cells):
            probs[sel] = chunk.probs[rows]
            shown = class_columns(chunk.label[rows])
            known = np.isin(chunk.label[rows], CLASS_IDS)
            fixed = chunk.corrected[rows] != NO_CORRECTION
            probs[sel[fixed]] = 0.0
            probs[sel[known], shown[known]] += np.where(fixed[known], 1.0, self.config.switch_margin)
            present[sel] = True
            corrected[sel] = chunk.corrected[rows]
        return probs, present, corrected

    def predicted_probs(self, cells: np.ndarray) -> np.ndarray:
        """(N,C) the nets' own class probabilities of each cell, whatever the user corrected (0 where the view
        has none)."""
        probs = np.zeros((len(cells), len(CLASS_IDS)), np.float32)
        for chunk, sel, rows in self._found(cells):
            probs[sel] = chunk.probs[rows]
        return probs

    def labels_at(self, points_m) -> tuple[np.ndarray, np.ndarray]:
        """(NYU40 uint16, confidence float32) per point: the cells' probabilities interpolated at the
        point (`nets.vertex_labels`; a correction wins in its cells; 0 below `min_point_conf`); where no
        cell around the point holds a label, the nearest labelled cell among the 26 neighbours of its
        cell; else (0, 0)."""
        if not self.chunks:  # nothing labelled yet (the nets off, or not run): no lookups
            n = len(np.asarray(points_m).reshape(-1, 3))
            return np.zeros(n, np.uint16), np.zeros(n, np.float32)
        return point_labels(points_m, self.grid.voxel_size_m, self.cell_probs, self.labels_of_cells,
                            self.config.min_point_conf)

    def mesh_labels(self, mesh, vote_config: SegmentVoteConfig = SegmentVoteConfig(),
                    segments: np.ndarray | None = None) -> np.ndarray:
        """(N,) uint16 NYU40 label per vertex of a whole mesh (`MeshArrays`): `labels_at`, then refined
        at surface segments (`nets.segment_vote`) unless that is disabled; corrections keep their class.
        `segments`: the mesh's `surface_segments` under `vote_config`, when the caller has them already."""
        if not len(mesh.positions_m):
            return np.zeros(0, np.uint16)
        labels, conf = self.labels_at(mesh.positions_m)
        if not vote_config.enabled:
            return labels
        keys, of_point = np.unique(pack_cells(self.cells_at(mesh.positions_m)), return_inverse=True)
        fixed = (self.cell_probs(unpack_cells(keys).astype(np.int32))[2] != NO_CORRECTION)[of_point]
        if segments is None:
            segments = surface_segments(mesh.normals, mesh.colors, mesh.faces, vote_config)
        return vote(labels, conf, segments, fixed, vote_config)

    def stored(self, cells: np.ndarray) -> np.ndarray:
        """Bool per cell ((N,3) int32): the view holds it."""
        out = np.zeros(len(cells), bool)
        for key, sel in group_by_chunk(cells, self.grid.chunk_voxels):
            if key in self.chunks:
                out[sel] = rows_of(self.chunks[key], key, self.grid.chunk_voxels, cells[sel]) >= 0
        return out

    def brush(self, center_m, radius_m: float) -> np.ndarray:
        """(K,3) int32 stored cells whose centres lie within `radius_m` of `center_m`."""
        v = self.grid.voxel_size_m
        c = np.asarray(center_m, np.float64).reshape(3)
        lo, hi = np.floor((c - radius_m) / v).astype(int), np.floor((c + radius_m) / v).astype(int)
        if np.prod(hi - lo + 1) > self.config.max_brush_cells:
            raise ValueError(f"brush of radius {radius_m} m covers too many cells")
        axes = [np.arange(a, b + 1, dtype=np.int32) for a, b in zip(lo, hi)]
        cells = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        cells = cells[np.linalg.norm((cells + 0.5) * v - c, axis=1) <= radius_m]
        return cells[self.stored(cells)]

    def connected_region(self, seed_point_m, max_cells: int = 100_000, toward: int | None = None) -> np.ndarray:
        """(K,3) int32 cells with the seed's label connected to it through stored cells (breadth first,
        `config.connectivity` neighbours, at most `max_cells`); empty when no labelled cell is near the seed.
        With `toward` (the NYU40 class the region is being set to), the region keeps to cells the nets find
        at least `config.region_min_share` times as likely to be that class as the seed cell, so a door the
        nets read as wall stops at the real wall (with the seed's probability of the class at 0, every
        connected cell of its label)."""
        seed_label, _ = self.labels_at(np.asarray(seed_point_m, np.float64).reshape(1, 3))
        if seed_label[0] == 0:
            return np.zeros((0, 3), np.int32)
        seed = self.cells_at(seed_point_m)
        if self.labels_of_cells(seed)[0][0] != seed_label[0]:  # the label came from a neighbour: start there
            near = (seed + NEIGHBOURS26).astype(np.int32)
            seed = near[self.labels_of_cells(near)[0] == seed_label[0]][:1]
        offsets = _OFFSETS6 if self.config.connectivity == 6 else NEIGHBOURS26
        like = self._likeness(seed, toward)
        visited = pack_cells(seed)
        frontier, found = seed, [seed]
        while len(frontier) and sum(map(len, found)) < max_cells:
            cand = np.unique(pack_cells((frontier[:, None, :] + offsets[None]).reshape(-1, 3)))
            cand = cand[~np.isin(cand, visited)]
            cells = unpack_cells(cand)
            same = self.labels_of_cells(cells)[0] == seed_label[0]
            if like is not None and same.any():
                same[same] = like(cells[same])
            visited = np.union1d(visited, cand)
            frontier = cells[same]
            found.append(frontier)
        return np.concatenate(found)[:max_cells]

    def _likeness(self, seed: np.ndarray, toward: int | None):
        """None (no limit), or a test of cells ((N,3)) -> bool: the nets give `toward` at least
        `config.region_min_share` times the seed cell's probability of it. The nets' own probabilities, not a
        correction's: clicking a cell corrected earlier must not lift the limit (its corrected class holds all
        the probability, any other class none)."""
        if toward is None or int(toward) not in CLASS_IDS or not len(seed):
            return None
        col = int(class_columns(np.array([toward]))[0])
        floor = self.config.region_min_share * self.predicted_probs(seed)[0, col]
        return lambda cells: self.predicted_probs(cells)[:, col] >= floor

    def class_counts(self) -> dict[int, int]:
        """{NYU40 id: labelled cells} over every class present (0 excluded)."""
        counts = np.zeros(0x10000, np.int64)
        for chunk in self.chunks.values():
            counts += np.bincount(chunk.label, minlength=0x10000)
        return {int(i): int(counts[i]) for i in np.nonzero(counts)[0] if i != 0}

    def __len__(self) -> int:
        return sum(len(c.coords) for c in self.chunks.values())

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(coords (N,3) int32, labels (N,) uint16) of every cell, sorted by packed cell key."""
        if not self.chunks:
            return np.zeros((0, 3), np.int32), np.zeros(0, np.uint16)
        coords = np.concatenate([c.coords for c in self.chunks.values()])
        labels = np.concatenate([c.label for c in self.chunks.values()])
        order = np.argsort(pack_cells(coords))
        return coords[order], labels[order]
