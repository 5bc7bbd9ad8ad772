"""Owns the per-chunk cell table of the label store: packed cell keys, grouping cells by chunk, and the
immutable row arrays one chunk keeps (a dense 32^3 index into probabilities, evidence, corrections).

Pure functions and immutable values: any thread may use them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.classes import CLASSES
from fusion.meshing import pack_keys, unpack_keys

CLASS_IDS = np.array(list(CLASSES), np.uint16)  #: NYU40 id of each probability column
NO_CORRECTION = np.uint16(0xFFFF)                 #: `corrected` value of a cell the user did not correct
#: the 26 neighbours of a cell
NEIGHBOURS26 = np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)
                         if (x, y, z) != (0, 0, 0)], np.int32)
_COLUMN = np.zeros(int(CLASS_IDS.max()) + 1, np.int64)
_COLUMN[CLASS_IDS] = np.arange(len(CLASS_IDS))    # NYU40 id -> probability column


def class_columns(nyu40: np.ndarray) -> np.ndarray:
    """Probability column of each NYU40 id (ids the nets do not label give column 0: mask them)."""
    return _COLUMN[np.clip(np.asarray(nyu40, np.int64), 0, len(_COLUMN) - 1)]


@dataclass(frozen=True)
class ChunkCells:
    """One chunk's cells (immutable once built)."""

    index: np.ndarray        # (n,n,n) int32 row of each local cell, -1 none; indexed [x, y, z]
    coords: np.ndarray       # (R,3) int32 global cells
    probs: np.ndarray        # (R,20) float32
    weight: np.ndarray       # (R,) float32 fused evidence
    corrected: np.ndarray    # (R,) uint16 user label or NO_CORRECTION
    label: np.ndarray        # (R,) uint16 effective NYU40 label
    conf: np.ndarray         # (R,) float32 effective confidence
    predicted: np.ndarray    # (R,) uint16 label from the probabilities alone (with hysteresis)


def _predicted_labels(probs: np.ndarray, weight: np.ndarray, shown: np.ndarray | None,
                      margin: float) -> np.ndarray:
    """Argmax class with hysteresis against the labels shown so far (0: none)."""
    best = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    label = np.where(weight > 0, CLASS_IDS[best], 0).astype(np.uint16)
    if shown is None or margin <= 0 or not len(label):
        return label
    rows = np.arange(len(label))
    hold = (shown != 0) & (weight > 0) & (
        probs[rows, best] - probs[rows, _COLUMN[np.minimum(shown, len(_COLUMN) - 1)]] < margin)
    return np.where(hold & np.isin(shown, CLASS_IDS), shown, label).astype(np.uint16)


def build_chunk(key, n: int, coords, probs, weight, corrected, shown=None, margin: float = 0.0) -> ChunkCells | None:
    """A chunk from row arrays (rows without evidence or correction are dropped); `shown` (R,) are the
    predicted labels shown before (0: none), held against near-ties (`margin`)."""
    keep = (weight > 0) | (corrected != NO_CORRECTION)
    coords, probs, weight, corrected = coords[keep], probs[keep], weight[keep], corrected[keep]
    if not len(coords):
        return None
    index = np.full((n, n, n), -1, np.int32)
    local = coords - np.asarray(key, np.int32) * n
    index[local[:, 0], local[:, 1], local[:, 2]] = np.arange(len(coords), dtype=np.int32)
    has_corr = corrected != NO_CORRECTION
    predicted = _predicted_labels(probs, weight, None if shown is None else shown[keep], margin)
    label = np.where(has_corr, corrected, predicted).astype(np.uint16)
    conf = np.where(has_corr, 1.0, probs.max(1)).astype(np.float32)
    return ChunkCells(index, coords, probs, weight, corrected, label, conf, predicted)


def rows_of(chunk: ChunkCells, key, n: int, cells: np.ndarray) -> np.ndarray:
    local = cells - np.asarray(key, np.int32) * n
    return chunk.index[local[:, 0], local[:, 1], local[:, 2]]


pack_cells, unpack_cells = pack_keys, unpack_keys  #: (N,3) int cells <-> (N,) int64 keys, packed as blocks are


def group_by_chunk(cells: np.ndarray, n: int):
    """Yield (chunk key tuple, row indices into cells) for the chunks the cells fall in."""
    if not len(cells):
        return
    packed = pack_cells(np.floor_divide(cells, n))
    uniq, inv = np.unique(packed, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=len(uniq)))])
    for i, key in enumerate(map(tuple, unpack_cells(uniq).tolist())):
        yield key, order[bounds[i]:bounds[i + 1]]


def empty_chunk() -> ChunkCells:
    z = np.zeros(0, np.float32)
    u = np.zeros(0, np.uint16)
    return ChunkCells(np.zeros((0, 0, 0), np.int32), np.zeros((0, 3), np.int32), np.zeros((0, len(CLASS_IDS)), np.float32),
                  z, u, u, z, u)


def labels_differ(old: ChunkCells | None, new: ChunkCells | None) -> bool:
    """Labels or cells differ (confidence-only changes do not count)."""
    if old is None or new is None:
        return old is not new
    return (len(old.coords) != len(new.coords) or not np.array_equal(old.coords, new.coords)
            or not np.array_equal(old.label, new.label))


def overlapping_chunks(keys, from_chunk_m: float, to_chunk_m: float) -> set:
    """Keys of the chunks of edge `to_chunk_m` that overlap the chunks `keys` of edge `from_chunk_m`
    (both grids aligned to the world origin), e.g. the mesh chunks to recolour when labels change."""
    out = set()
    for key in keys:
        lo = np.floor(np.asarray(key, np.float64) * from_chunk_m / to_chunk_m + 1e-9).astype(int)
        hi = np.floor((np.asarray(key, np.float64) + 1) * from_chunk_m / to_chunk_m - 1e-9).astype(int)
        out.update((x, y, z) for x in range(lo[0], hi[0] + 1) for y in range(lo[1], hi[1] + 1)
                   for z in range(lo[2], hi[2] + 1))
    return out
