"""Owns the label store's session arrays: their names (prefix `labels_`), writing its cell rows and reading
them back, sessions from before the ceiling class included. Pure functions: any thread."""
from __future__ import annotations

import numpy as np

from fusion.coarse import CoarseGridConfig
from nets.cells import CLASS_IDS
from nets.label_moves import FIELDS, CellRows

PREFIX = "labels_"                                #: prefix of the arrays a label store saves


def rows_to_arrays(rows: CellRows, grid: CoarseGridConfig) -> dict[str, np.ndarray]:
    """Named arrays of the rows and the grid they are on."""
    out = {f"{PREFIX}{f}": getattr(rows, f) for f in FIELDS}
    return out | {f"{PREFIX}grid": np.array([grid.voxel_size_m, grid.chunk_voxels], np.float64)}


def rows_from_arrays(arrays: dict, grid: CoarseGridConfig) -> CellRows:
    """The rows `rows_to_arrays` wrote; ValueError when arrays are missing or were saved on another grid."""
    try:
        coords = np.asarray(arrays[f"{PREFIX}coords"], np.int32).reshape(-1, 3)
        n = len(coords)
        probs = _probs_columns(np.asarray(arrays[f"{PREFIX}probs"], np.float32), n)
        weight = np.asarray(arrays[f"{PREFIX}weight"], np.float32).reshape(n)
        corrected = np.asarray(arrays[f"{PREFIX}corrected"], np.uint16).reshape(n)
        shown = np.asarray(arrays.get(f"{PREFIX}predicted", np.zeros(n)), np.uint16).reshape(n)
        saved_grid = np.asarray(arrays[f"{PREFIX}grid"], np.float64)
    except KeyError as exc:
        raise ValueError(f"label store arrays lack {exc}") from None
    if not np.allclose(saved_grid, [grid.voxel_size_m, grid.chunk_voxels]):
        raise ValueError(f"label store grid {saved_grid.tolist()} differs from {grid}")
    return CellRows(coords, probs, weight, corrected, shown)


def _probs_columns(probs: np.ndarray, rows: int) -> np.ndarray:
    """Saved probabilities as (rows, classes); a session from before the ceiling class (ScanNet-20 only)
    gets a ceiling column of zeros."""
    if probs.size == rows * (len(CLASS_IDS) - 1):
        return np.concatenate([probs.reshape(rows, -1), np.zeros((rows, 1), np.float32)], 1)
    return probs.reshape(rows, len(CLASS_IDS))


def has_label_arrays(arrays: dict) -> bool:
    return f"{PREFIX}coords" in arrays
