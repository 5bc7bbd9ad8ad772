"""Owns moving label cells with the world: when loop closure corrects the map, every stored cell (its
probabilities, evidence, user correction) moves to the cell its centre moves into.

A move is a function mapping old world points (N,3) to new ones (`fusion.loop_closure.MapCorrection.move_points`:
each point moves with the keyframe whose camera was nearest). Cells are re-gridded onto the same nets
grid; where several land in one cell, a user correction beats a prediction, then the more confident
prediction wins (then the one with more evidence). Pure functions on row arrays: any thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nets.cells import NO_CORRECTION, build_chunk, empty_chunk, group_by_chunk, pack_cells

Move = Callable[[np.ndarray], np.ndarray]   #: old world points (N,3) metres -> new world points (N,3)


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


FIELDS = ("coords", "probs", "weight", "corrected", "predicted")


def gather(chunks) -> CellRows:
    """The rows of every chunk (`nets.cells.ChunkCells`) in one CellRows."""
    chunks = list(chunks) or [empty_chunk()]
    return CellRows(*(np.concatenate([getattr(c, f) for c in chunks]) for f in FIELDS))


def moved_chunks(chunks, voxel_size_m: float, chunk_voxels: int, moves: Sequence[Move], margin: float) -> dict:
    """{chunk key: ChunkCells} of the cells of `chunks` after `moves` (in order), re-gridded."""
    rows = gather(chunks)
    for move in moves:
        rows = move_rows(rows, voxel_size_m, move)
    return {key: build_chunk(key, chunk_voxels, rows.coords[sel], rows.probs[sel], rows.weight[sel],
                             rows.corrected[sel], rows.predicted[sel], margin)
            for key, sel in group_by_chunk(rows.coords, chunk_voxels)}


def moved_cells(cells: np.ndarray, voxel_size_m: float, moves: Sequence[Move]) -> np.ndarray:
    """(N,3) int32 cell each of `cells` lands in after `moves` (applied in order) move its centre."""
    cells = np.asarray(cells, np.int32).reshape(-1, 3)
    for move in moves:
        if not len(cells):
            break
        centres_m = (cells.astype(np.float64) + 0.5) * voxel_size_m
        cells = np.floor(np.asarray(move(centres_m), np.float64).reshape(-1, 3) / voxel_size_m).astype(np.int32)
    return cells


def winners(cells: np.ndarray, rank: tuple) -> np.ndarray:
    """Row of the winner of each distinct cell among `cells` (N,3): the first of `rank`'s lexicographic
    order (np.lexsort keys, last key primary). Rows of distinct cells, sorted by packed cell key."""
    order = np.lexsort(rank)
    _, first = np.unique(pack_cells(cells[order]), return_index=True)
    return order[first]


def move_rows(rows: CellRows, voxel_size_m: float, move: Move) -> CellRows:
    """The cells of `rows` moved by `move` and re-gridded (collisions: correction, confidence, evidence)."""
    if not len(rows.coords):
        return rows
    cells = moved_cells(rows.coords, voxel_size_m, [move])
    conf = rows.probs.max(1) if rows.probs.shape[1] else np.zeros(len(cells), np.float32)
    uncorrected = rows.corrected == NO_CORRECTION
    keep = winners(cells, (-rows.weight, -conf, uncorrected))
    return rows.take(keep, cells[keep])


def moved_values(cells: np.ndarray, values: np.ndarray, voxel_size_m: float, moves: Sequence[Move]):
    """(cells, values) of an undo record in the newest world: cells moved, one value per distinct cell
    (the first cell's that landed there)."""
    moved = moved_cells(cells, voxel_size_m, moves)
    if not len(moved):
        return moved, np.asarray(values)[:0]
    keep = winners(moved, (np.arange(len(moved)),))
    return moved[keep], np.asarray(values)[keep]
