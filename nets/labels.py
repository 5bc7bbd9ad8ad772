"""Owns the label store: per-cell class probabilities on the nets' grid, fused over predictions, plus user corrections.

Cells are the nets' coarse cells (`fusion.coarse.CoarseGridConfig`, 5 cm). Each chunk (32^3 cells)
keeps a dense int32 index of its cells into row arrays (probabilities, evidence weight, correction),
so lookups are vectorised numpy. Chunks are immutable snapshots replaced on every change
(copy-on-write): readers take the current chunk references under a short lock and compute without it.

Fusion of a new prediction q (probabilities over the 20 classes) into a cell holding P with weight W:
the old evidence is discounted (`keep_old`), the new one counts with its confidence c = max(q):
    P <- (keep_old * W * P + c * q) / (keep_old * W + c),   W <- keep_old * W + c
so the latest prediction, made with the most evidence, dominates the probabilities. The label shown
is their argmax with hysteresis: a cell switches class only when the new class leads the current one
by `switch_margin`, so near-ties that alternate between re-inferences do not flicker, while a clear
change of evidence switches at once. `settle()` (when scanning stops: a drain) drops the hysteresis and
shows the plain argmax, the labels a single pass over the final volume would give. A user correction
always wins over predictions and survives re-inference; cells a re-inferred chunk no longer predicts
are dropped unless corrected. The per-chunk cell table itself lives in `nets.cells`, lookups over a
snapshot of the chunks in `nets.label_reads`.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from fusion.classes import CLASSES
from fusion.coarse import CoarseGridConfig
from nets.cells import (CLASS_IDS, NO_CORRECTION, ChunkCells, build_chunk, group_by_chunk, labels_differ,
                        overlapping_chunks, pack_cells, rows_of, unpack_cells)
from nets.label_arrays import PREFIX, has_label_arrays, rows_from_arrays, rows_to_arrays  # noqa: F401 (re-exported)
from nets.label_moves import chunks_of, gather, moved_chunks, moved_values
from nets.label_reads import LabelView
from nets.segment_vote import SegmentVoteConfig


@dataclass(frozen=True)
class LabelStoreConfig:
    """How predictions fuse and how lookups search."""

    keep_old: float = 0.05        #: share of a cell's earlier evidence kept when a new prediction arrives
    switch_margin: float = 0.1    #: probability lead a new class needs over the shown one to replace it
    connectivity: int = 6         #: 6 or 26: neighbours that connect cells in `connected_region`
    #: a region set to a class keeps to cells the nets find at least this share as likely to be that class as the
    #: clicked cell (`LabelView.connected_region`; 0: every connected cell of the clicked label)
    region_min_share: float = 0.5
    history: int = 4096           #: change records kept for `changed_since` (older asks get every chunk)
    max_brush_cells: int = 200_000  #: a brush larger than this many cells is refused
    min_point_conf: float = 0.3   #: a mesh point whose interpolated confidence is lower stays unlabelled (0)


@dataclass(frozen=True)
class Correction:
    """One user correction (immutable): `revert` undoes it, `apply` re-applies it (redo)."""

    cells: np.ndarray        #: (K,3) int32 cells
    label: int               #: NYU40 id the user set
    previous: np.ndarray     #: (K,) uint16 correction each cell had before (NO_CORRECTION: none)
    world: int = 0           #: world moves the store had followed when it was made (cells are in that world)


class LabelStore:
    """Fused labels of the coarse cells. Thread-safe: the nets thread fuses, the GUI thread looks up
    and corrects; a short lock guards the chunk table, a writer lock serialises changes."""

    def __init__(self, grid: CoarseGridConfig = CoarseGridConfig(), config: LabelStoreConfig = LabelStoreConfig()):
        if config.connectivity not in (6, 26):
            raise ValueError("connectivity must be 6 or 26")
        self.grid = grid
        self.config = config
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._chunks: dict[tuple, ChunkCells] = {}
        self._version = 0
        self._history: deque[tuple[int, frozenset]] = deque(maxlen=config.history)
        self._moves: list = []   # world moves followed (functions: old world points -> new), oldest first

    # --- changes -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def _commit(self, new: dict, changed: set | None = None) -> set:
        """Swap in new chunks (None removes one); bump the version when `changed` (default: all of
        `new`) is not empty. Caller holds the writer lock. Returns `changed`."""
        changed = set(new) if changed is None else changed
        with self._lock:
            for key, chunk in new.items():
                if chunk is None:
                    self._chunks.pop(key, None)
                else:
                    self._chunks[key] = chunk
            if changed:
                self._version += 1
                self._history.append((self._version, frozenset(changed)))
        return changed

    def changed_since(self, version: int) -> tuple[int, set]:
        """(current version, chunk keys changed after `version`); every chunk if that is too old."""
        with self._lock:
            if version >= self._version:
                return self._version, set()
            oldest = self._history[0][0] if self._history else self._version + 1
            if version < oldest - 1:
                keys = set(self._chunks).union(*(k for _, k in self._history))
            else:
                keys = set().union(*(k for v, k in self._history if v > version))
            return self._version, keys

    def fuse(self, pred, world: int | None = None) -> set | None:
        """Fuse a RegionPrediction's observed sites into the cores of its chunks; returns chunk keys
        whose labels or cells changed. Chunks of `pred.keys` with no site lose their uncorrected cells.
        world: the world moves the prediction's input had seen; when the store has followed another
        number, the prediction is of another world: nothing is fused and None is returned."""
        n = self.grid.chunk_voxels
        coords = np.asarray(pred.coords, np.int32)[np.asarray(pred.observed, bool)]
        probs = np.asarray(pred.probs, np.float32)[np.asarray(pred.observed, bool)]
        groups = dict(group_by_chunk(coords, n))
        empty = np.zeros(0, np.int64)
        with self._write_lock:
            if world is not None and world != len(self._moves):
                return None
            new, changed = {}, set()
            for key in map(tuple, pred.keys):
                sel = groups.get(key, empty)
                old = self._chunks.get(key)
                new[key] = self._fuse_chunk(old, key, coords[sel], probs[sel])
                if labels_differ(old, new[key]):
                    changed.add(key)
            return self._commit(new, changed)

    def _fuse_chunk(self, old: ChunkCells | None, key, coords, q) -> ChunkCells | None:
        n = self.grid.chunk_voxels
        c = q.max(1) if len(q) else np.zeros(0, np.float32)
        probs, weight = q.copy(), c.astype(np.float32)
        corrected = np.full(len(coords), NO_CORRECTION, np.uint16)
        shown = np.zeros(len(coords), np.uint16)
        if old is not None:
            rows = rows_of(old, key, n, coords)
            has = rows >= 0
            w_old = old.weight[rows[has]] * self.config.keep_old
            weight[has] = w_old + c[has]
            mix = np.where(weight[has] > 0, w_old / np.maximum(weight[has], 1e-12), 0)[:, None]
            probs[has] = mix * old.probs[rows[has]] + (1 - mix) * q[has]
            corrected[has] = old.corrected[rows[has]]
            shown[has] = old.predicted[rows[has]]
            hit = np.zeros(len(old.coords), bool)
            hit[rows[has]] = True
            kept = ~hit & (old.corrected != NO_CORRECTION)  # corrected cells survive re-inference
            coords = np.concatenate([coords, old.coords[kept]])
            probs = np.concatenate([probs, old.probs[kept]])
            weight = np.concatenate([weight, np.zeros(int(kept.sum()), np.float32)])  # no evidence left
            corrected = np.concatenate([corrected, old.corrected[kept]])
            shown = np.concatenate([shown, old.predicted[kept]])
        return build_chunk(key, n, coords, probs, weight, corrected, shown, self.config.switch_margin)

    def correct(self, cells, nyu40: int) -> Correction:
        """Set the user's label on `cells` ((K,3) int); it wins over every prediction until reverted."""
        cells = unpack_cells(np.unique(pack_cells(np.asarray(cells, np.int32).reshape(-1, 3))))
        label = int(nyu40)
        if label != 0 and label not in CLASSES:
            raise ValueError(f"{label} is not a ScanNet-20 NYU40 id (or 0)")
        with self._write_lock:
            previous = self._set_corrected(cells, np.full(len(cells), label, np.uint16))
            return Correction(cells, label, previous, len(self._moves))

    def apply(self, correction: Correction) -> set:
        """Re-apply a correction (redo), where its cells are now; returns changed chunk keys."""
        with self._write_lock:
            cells, _ = self._followed(correction)
            self._set_corrected(cells, np.full(len(cells), correction.label, np.uint16))
            return {k for k, _ in group_by_chunk(cells, self.grid.chunk_voxels)}

    def revert(self, correction: Correction) -> set:
        """Undo a correction: each cell (where it is now) gets back the correction it had before; returns
        changed chunk keys."""
        with self._write_lock:
            cells, previous = self._followed(correction)
            self._set_corrected(cells, previous)
            return {k for k, _ in group_by_chunk(cells, self.grid.chunk_voxels)}

    def _followed(self, correction: Correction) -> tuple[np.ndarray, np.ndarray]:
        """A correction's (cells, previous values) moved into the current world. Caller holds the writer lock."""
        return moved_values(correction.cells, correction.previous, self.grid.voxel_size_m, self._moves[correction.world:])

    # --- world moves (loop closure) ------------------------------------------------------------
    @property
    def world(self) -> int:
        """World moves this store has followed."""
        with self._write_lock:
            return len(self._moves)

    def follow(self, moves) -> set:
        """Follow the moves of the world not followed yet (`moves`: every move of the scan so far, oldest
        first; `nets.label_moves.Move`): the cells move and are resampled (a correction beats a prediction,
        then the more confident wins). Undo records made before follow their cells. Returns changed chunk keys."""
        with self._write_lock:
            fresh = list(moves)[len(self._moves):]
            if not fresh:
                return set()
            moved = moved_chunks(self._snapshot().values(), self.grid.voxel_size_m, self.grid.chunk_voxels, fresh,
                                 self.config.switch_margin)
            self._moves.extend(fresh)
            return self._commit({key: None for key in self._chunks} | moved)

    def _set_corrected(self, cells: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Set `corrected` of cells (creating rows); returns the previous values. Caller holds the writer lock."""
        n = self.grid.chunk_voxels
        previous = np.full(len(cells), NO_CORRECTION, np.uint16)
        new = {}
        for key, sel in group_by_chunk(cells, n):
            old = self._chunks.get(key)
            k = len(old.coords) if old is not None else 0
            coords = old.coords if old is not None else np.zeros((0, 3), np.int32)
            probs = old.probs.copy() if old is not None else np.zeros((0, len(CLASS_IDS)), np.float32)
            weight = old.weight if old is not None else np.zeros(0, np.float32)
            corrected = old.corrected.copy() if old is not None else np.zeros(0, np.uint16)
            shown = old.predicted if old is not None else np.zeros(0, np.uint16)
            rows = rows_of(old, key, n, cells[sel]) if old is not None else np.full(len(sel), -1, np.int32)
            missing = rows < 0
            previous[sel[~missing]] = corrected[rows[~missing]]
            rows[missing] = np.arange(k, k + int(missing.sum()), dtype=np.int32)
            coords = np.concatenate([coords, cells[sel][missing]])
            probs = np.concatenate([probs, np.zeros((int(missing.sum()), len(CLASS_IDS)), np.float32)])
            weight = np.concatenate([weight, np.zeros(int(missing.sum()), np.float32)])
            corrected = np.concatenate([corrected, np.zeros(int(missing.sum()), np.uint16)])
            shown = np.concatenate([shown, np.zeros(int(missing.sum()), np.uint16)])
            corrected[rows] = values[sel]
            new[key] = build_chunk(key, n, coords, probs, weight, corrected, shown, self.config.switch_margin)
        self._commit(new)
        return previous

    def settle(self, keys=None) -> set:
        """Show the plain argmax (no hysteresis) in the chunks `keys` (default all); returns changed keys."""
        n = self.grid.chunk_voxels
        with self._write_lock:
            chunks = self._chunks if keys is None else {k: self._chunks[k] for k in map(tuple, keys)
                                                         if k in self._chunks}
            new = {key: build_chunk(key, n, c.coords, c.probs, c.weight, c.corrected) for key, c in chunks.items()}
            return self._commit(new, {k for k, c in new.items() if labels_differ(chunks[k], c)})

    def clear(self) -> None:
        """Forget every cell (and the world moves followed: an empty store is in any world)."""
        with self._write_lock:
            self._moves.clear()
            self._commit({key: None for key in list(self._chunks)})

    # --- lookups (`nets.label_reads`) ----------------------------------------------------------
    def view(self) -> LabelView:
        """An immutable snapshot of the labels for lookups (stays as it is while the store changes)."""
        return LabelView(self._snapshot(), self.grid, self.config)

    def _snapshot(self) -> dict:
        with self._lock:
            return dict(self._chunks)

    def cells_at(self, points_m) -> np.ndarray:
        return self.view().cells_at(points_m)

    def labels_of_cells(self, cells) -> tuple[np.ndarray, np.ndarray]:
        return self.view().labels_of_cells(cells)

    def labels_at(self, points_m) -> tuple[np.ndarray, np.ndarray]:
        return self.view().labels_at(points_m)

    def mesh_labels(self, mesh, vote_config: SegmentVoteConfig = SegmentVoteConfig(),
                    segments: np.ndarray | None = None) -> np.ndarray:
        return self.view().mesh_labels(mesh, vote_config, segments)

    def brush(self, center_m, radius_m: float) -> np.ndarray:
        return self.view().brush(center_m, radius_m)

    def connected_region(self, seed_point_m, max_cells: int = 100_000, toward: int | None = None) -> np.ndarray:
        return self.view().connected_region(seed_point_m, max_cells, toward)

    def class_counts(self) -> dict[int, int]:
        return self.view().class_counts()

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        return self.view().cells()

    def __len__(self) -> int:
        return len(self.view())

    def mesh_chunks(self, keys, mesh_chunk_m: float) -> set:
        """Keys of the mesh chunks (edge `mesh_chunk_m`) overlapping the store's chunks `keys`, e.g. from
        `changed_since`: the meshes to recolour when labels land."""
        return overlapping_chunks(keys, self.grid.chunk_size_m, mesh_chunk_m)

    def chunk_keys(self) -> set:
        return set(self._snapshot())

    # --- persistence ---------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays (prefix `labels_`, `nets.label_arrays`) that `from_arrays` restores; for session extras."""
        return rows_to_arrays(gather(self._snapshot().values()), self.grid)

    @classmethod
    def from_arrays(cls, arrays: dict, grid: CoarseGridConfig = CoarseGridConfig(),
                    config: LabelStoreConfig = LabelStoreConfig()) -> "LabelStore":
        """A store from `to_arrays` output; ValueError when the arrays are missing or do not fit `grid`."""
        store = cls(grid, config)
        with store._write_lock:
            store._commit(chunks_of(rows_from_arrays(arrays, grid), grid.chunk_voxels, config.switch_margin))
        return store
