"""Owns moving label cells with the world: when loop closure corrects the map, every stored cell (its
probabilities, evidence, user correction) moves with the part of the map it belongs to.

A move is a function giving the rigid world change (new <- old, 4x4) of each old world point (N,3)
(`loopclosure.correction.MapCorrection.surface_transforms`: the change of the keyframe that saw the point
most squarely). Cells are resampled onto the same nets grid: a new cell takes the old cell its centre
came from under the change of that old cell (nearest-neighbour resampling of each rigidly moved piece:
a moved surface keeps its cells, without holes or doubled cells from rounding). Where old cells of two
pieces land in one new cell, a user correction beats a prediction, then the more confident prediction
wins (then the one with more evidence). Pure functions on row arrays: any thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nets.cells import NEIGHBOURS26, NO_CORRECTION, build_chunk, empty_chunk, group_by_chunk, pack_cells

Move = Callable[[np.ndarray], np.ndarray]   #: old world points (N,3) metres -> world change of each (N,4,4)
FIELDS = ("coords", "probs", "weight", "corrected", "predicted")
_NEAR = np.vstack([np.zeros((1, 3), np.int32), NEIGHBOURS26])   #: a cell and its 26 neighbours


@dataclass(frozen=True)
class CellRows:
    """Row arrays of stored cells (one row a cell), as the label store keeps them per chunk."""

    coords: np.ndarray       #: (R,3) int32 cells
    probs: np.ndarray        #: (R,C) float32
    weight: np.ndarray       #: (R,) float32 evidence
    corrected: np.ndarray    #: (R,) uint16 user label or NO_CORRECTION
    predicted: np.ndarray    #: (R,) uint16 label shown from the probabilities

    def take(self, rows: np.ndarray, coords: np.ndarray | None = None) -> "CellRows":
        return CellRows(self.coords[rows] if coords is None else coords, self.probs[rows], self.weight[rows],
                        self.corrected[rows], self.predicted[rows])


def gather(chunks) -> CellRows:
    """The rows of every chunk (`nets.cells.ChunkCells`) in one CellRows."""
    chunks = list(chunks) or [empty_chunk()]
    return CellRows(*(np.concatenate([getattr(c, f) for c in chunks]) for f in FIELDS))


def resample(cells: np.ndarray, voxel_size_m: float, move: Move) -> tuple[np.ndarray, np.ndarray]:
    """(new cells (M,3) int32, the old row each came from (M,)) after `move`: every new cell whose centre,
    moved back by an old cell's change, falls in that old cell (several old cells may claim one new
    cell: see `winners`)."""
    cells = np.asarray(cells, np.int32).reshape(-1, 3)
    if not len(cells):
        return cells, np.zeros(0, np.int64)
    centres = (cells + 0.5) * voxel_size_m
    T = np.asarray(move(centres), np.float64).reshape(-1, 4, 4)
    back = np.linalg.inv(T)
    ahead = np.floor((np.einsum("nij,nj->ni", T[:, :3, :3], centres) + T[:, :3, 3]) / voxel_size_m).astype(np.int32)
    found, owners = [], []
    for offset in _NEAR:   # a moved cell covers new cells next to where its centre lands
        new = ahead + offset
        p = (new + 0.5) * voxel_size_m
        came = np.floor((np.einsum("nij,nj->ni", back[:, :3, :3], p) + back[:, :3, 3]) / voxel_size_m)
        hit = np.all(came == cells, axis=1)
        found.append(new[hit])
        owners.append(np.nonzero(hit)[0])
    return np.concatenate(found), np.concatenate(owners)


def winners(cells: np.ndarray, rank: tuple) -> np.ndarray:
    """Row of the winner of each distinct cell among `cells` (N,3): the first of `rank`'s lexicographic
    order (np.lexsort keys, last key primary). Rows of distinct cells, sorted by packed cell key."""
    order = np.lexsort(rank)
    _, first = np.unique(pack_cells(cells[order]), return_index=True)
    return order[first]


def move_rows(rows: CellRows, voxel_size_m: float, move: Move) -> CellRows:
    """The cells of `rows` moved by `move` and resampled (collisions: correction, confidence, evidence)."""
    if not len(rows.coords):
        return rows
    cells, owner = resample(rows.coords, voxel_size_m, move)
    conf = rows.probs.max(1) if rows.probs.shape[1] else np.zeros(len(rows.coords), np.float32)
    uncorrected = rows.corrected == NO_CORRECTION
    keep = winners(cells, (-rows.weight[owner], -conf[owner], uncorrected[owner]))
    return rows.take(owner[keep], cells[keep])


def moved_chunks(chunks, voxel_size_m: float, chunk_voxels: int, moves: Sequence[Move], margin: float) -> dict:
    """{chunk key: ChunkCells} of the cells of `chunks` after `moves` (in order), resampled."""
    rows = gather(chunks)
    for move in moves:
        rows = move_rows(rows, voxel_size_m, move)
    return chunks_of(rows, chunk_voxels, margin)


def chunks_of(rows: CellRows, chunk_voxels: int, margin: float) -> dict:
    """{chunk key: ChunkCells} holding `rows` (the labels shown so far held against near-ties by `margin`)."""
    return {key: build_chunk(key, chunk_voxels, rows.coords[sel], rows.probs[sel], rows.weight[sel],
                             rows.corrected[sel], rows.predicted[sel], margin)
            for key, sel in group_by_chunk(rows.coords, chunk_voxels)}


def moved_values(cells: np.ndarray, values: np.ndarray, voxel_size_m: float, moves: Sequence[Move]):
    """(cells, values) of an undo record in the newest world: its cells moved and resampled like the
    store's, each new cell with the value of the old cell it came from."""
    cells, values = np.asarray(cells, np.int32).reshape(-1, 3), np.asarray(values)
    for move in moves:
        cells, owner = resample(cells, voxel_size_m, move)
        keep = winners(cells, (owner,))
        cells, values = cells[keep], values[owner[keep]]
    return cells, values
