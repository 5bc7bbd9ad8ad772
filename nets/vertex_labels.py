"""Owns per-point labels read from the label store at mesh resolution: class probabilities of the nets'
cells interpolated trilinearly between cell centres, so label edges follow the surface between cells
instead of stepping 5 cm at a time; a user correction wins inside the cells it covers; a point whose
interpolated confidence is below a floor stays unlabelled (0) rather than painted with a guess.

Pure functions over a lookup callable: any thread may call them (the store takes its own snapshot).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from nets.cells import CLASS_IDS, NEIGHBOURS26, NO_CORRECTION, pack_cells, unpack_cells

_CORNERS = np.array([(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.int64)

#: lookup(cells (N,3) int32) -> (probs (N,20) float32 with the shown class favoured and corrections
#: one-hot, present (N,) bool, corrected (N,) uint16 NO_CORRECTION where none)
CellLookup = Callable[[np.ndarray], tuple]


def point_labels(points_m: np.ndarray, cell_m: float, lookup: CellLookup, labels_of: Callable,
                 min_conf: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(NYU40 uint16, confidence float32) per point: `interpolated_labels`; where none of the eight cells
    around a point holds a label, the label of the nearest labelled cell (by distance to its centre) among
    the 26 neighbours of the point's own cell (`labels_of(cells)` -> (label, confidence), 0 where none);
    else (0, 0)."""
    p = np.asarray(points_m, np.float64).reshape(-1, 3)
    label, conf, found = interpolated_labels(p, cell_m, lookup, min_conf)
    miss = np.nonzero(~found)[0]
    if len(miss):
        cand = (np.floor(p[miss] / cell_m).astype(np.int32)[:, None, :] + NEIGHBOURS26[None]).reshape(-1, 3)
        lab, cf = (a.reshape(len(miss), -1) for a in labels_of(cand))
        dist = np.linalg.norm((cand.reshape(len(miss), -1, 3) + 0.5) * cell_m - p[miss][:, None, :], axis=2)
        dist[lab == 0] = np.inf
        best = dist.argmin(1)
        hit = np.isfinite(dist[np.arange(len(miss)), best])
        label[miss[hit]], conf[miss[hit]] = lab[hit, best[hit]], cf[hit, best[hit]]
    return label, conf


def interpolated_labels(points_m: np.ndarray, cell_m: float, lookup: CellLookup, min_conf: float = 0.0,
                        batch_points: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(NYU40 uint16, confidence float32, found bool) per point. `found` is False where none of the
    eight cells around the point holds a label (the caller may look further). Points go in batches
    (the eight cells' probabilities of a batch are held at once)."""
    p = np.asarray(points_m, np.float64).reshape(-1, 3)
    parts = [_interpolate(p[i:i + batch_points], cell_m, lookup, min_conf) for i in range(0, len(p), batch_points)]
    if not parts:
        return np.zeros(0, np.uint16), np.zeros(0, np.float32), np.zeros(0, bool)
    return tuple(np.concatenate(a) for a in zip(*parts))


def _interpolate(p: np.ndarray, cell_m: float, lookup: CellLookup, min_conf: float):
    u = p / cell_m - 0.5                      # in cell-centre units
    base = np.floor(u).astype(np.int64)
    frac = u - base
    n = len(p)
    # neighbouring points share their eight cells: look each cell up once (a mesh has ~25 points a cell)
    keys, of_point = np.unique(pack_cells(base), return_inverse=True)
    corners = (unpack_cells(keys)[None] + _CORNERS[:, None, :]).reshape(-1, 3).astype(np.int32)
    probs, present, corrected = (a.reshape(8, len(keys), *a.shape[1:]) for a in lookup(corners))
    frac = frac.astype(np.float32)
    w = np.prod(np.where(_CORNERS[:, None, :] == 1, frac[None], 1.0 - frac[None]), axis=2)  # (8, n)
    w = np.where(present[:, of_point], w, np.float32(0))
    score = np.einsum("kn,knc->nc", w, probs[:, of_point])
    total = w.sum(0)
    found = total > 1e-9
    best = score.argmax(1) if n else np.zeros(0, np.int64)
    conf = np.where(found, score[np.arange(n), best] / np.maximum(total, 1e-12), 0.0)
    label = np.where(found, CLASS_IDS[best], 0).astype(np.uint16)
    own_corner = (frac >= 0.5) @ np.array([4, 2, 1])  # the corner that is the point's own cell
    own = corrected[own_corner, of_point]
    fixed = own != NO_CORRECTION
    label[fixed], conf[fixed] = own[fixed], 1.0
    label[found & ~fixed & (conf < min_conf)] = 0
    return label, np.minimum(conf, 1.0).astype(np.float32), found | fixed
