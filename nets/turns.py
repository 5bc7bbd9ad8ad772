"""Owns test-time averaging over quarter turns about gravity: the net sees the scene as it is and turned by
90, 180 and 270 degrees about z, and each cell's outputs are the mean over the turns that produced it.

The nets' grid is gravity-aligned, so a quarter turn maps cells onto cells exactly (no resampling) and the
per-cell features (signed distance, counts, colour) do not change. The nets were trained with these
symmetries, but a net is never exactly invariant: on the real ScanNet room the mean of four turns scores
0.334 mIoU against 0.310 for one pass with the stage 6/7 weights (`python -m nets.eval --real-room-rescore
DIR --turns 4|1`, model card). Costs `turns` forward passes, so it is meant for whole-scene passes (reconstruct's final labels, relabeling), not for the live labels.

Pure functions; any thread may call them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from fusion.meshing import find_sorted
from nets.cells import pack_cells

MAX_TURNS = 4
FINAL_TURNS = 4  #: turns averaged wherever the whole scene is labeled at once (final labels, relabeling)


def turn_cells(cells: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Cells (N,3) int turned by `quarter_turns` x 90 degrees about z: cell (i, j) spans [i, i+1) x [j, j+1),
    so its turn is (-j-1, i), which keeps the turned cell's span exactly."""
    c = np.asarray(cells, np.int64).reshape(-1, 3)
    for _ in range(quarter_turns % MAX_TURNS):
        c = np.stack([-c[:, 1] - 1, c[:, 0], c[:, 2]], 1)
    return c.astype(np.int32)


def unturn_cells(cells: np.ndarray, quarter_turns: int) -> np.ndarray:
    """The inverse of `turn_cells`."""
    return turn_cells(cells, MAX_TURNS - quarter_turns % MAX_TURNS)


def matching_rows(reference: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `reference`, rows of `cells`) of the cells found in both (each cell at most once in each)."""
    ref = pack_cells(reference)
    order = np.argsort(ref)
    sorted_ref = ref[order]
    packed = pack_cells(cells)
    at = find_sorted(sorted_ref, packed)
    hit = np.flatnonzero(at >= 0)
    return order[at[hit]], hit


def turned_mean(forward: Callable, cells: np.ndarray, features: np.ndarray, turns: int,
                out_cells: np.ndarray, values: list) -> list:
    """`values` (arrays with a row per `out_cells`, from one pass over `cells`) averaged with the passes over
    `cells` turned 1..turns-1 quarter turns. `forward(cells, features)` -> (its out cells (M,3), then arrays
    of M rows, the first len(values) of them matching `values`). A cell a turned pass did not produce keeps
    the mean of the passes that did."""
    sums = [np.asarray(v, np.float64).copy() for v in values]
    count = np.ones(len(out_cells))
    for k in range(1, turns):
        t_cells, *t_values = forward(turn_cells(cells, k), features)
        ref, rows = matching_rows(out_cells, unturn_cells(t_cells, k))
        for total, v in zip(sums, t_values):
            total[ref] += v[rows]
        count[ref] += 1
    return [(total / count.reshape(-1, *[1] * (total.ndim - 1))).astype(np.float32) for total in sums]
