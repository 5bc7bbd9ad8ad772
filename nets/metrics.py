"""Owns the nets' scores on samples: semantic IoU on the observed surface, completion IoU, SDF error,
and surface coverage with and without completion.

Definitions (cells are the nets' 5 cm grid; "surface cell": |ground-truth SDF| < 0.75 cell):
- semantic IoU per class over observed sites whose closest ground-truth surface is within 2 cells and
  one of the labeled classes; the prediction is the best of them (never "empty"). mIoU averages the
  ScanNet-20 classes present in the ground truth (the ceiling's IoU is reported, not averaged).
- completion IoU over unobserved cells within `reach_cells` of the observed sites: predicted surface
  (a generated site with predicted |SDF| < 0.75 cell and a class other than empty) vs surface cells.
- SDF L1 (metres) over all output sites.
- coverage: share of the surface cells within `reach_cells` of the observed sites that lie within one
  cell (26-neighbourhood) of the observed sites alone, and of observed + completed sites; precision:
  share of completed cells within one cell of a surface cell.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from nets.batch import SURFACE_CELLS, make_batch
from fusion.classes import SCANNET20
from nets.data import CLASS_IDS, Sample
from nets.model import EMPTY
from nets.infer import forward_pass
from nets.turns import turned_mean

REACH_CELLS = 8


def _dense(cells: np.ndarray, lo: np.ndarray, shape) -> np.ndarray:
    grid = np.zeros(shape, bool)
    rel = cells - lo
    inside = np.all((rel >= 0) & (rel < shape), axis=1)
    grid[tuple(rel[inside].T)] = True
    return grid


def _near(grid: np.ndarray, cells: int) -> np.ndarray:
    return ndimage.binary_dilation(grid, np.ones((3, 3, 3), bool), iterations=cells) if cells else grid


def sample_scores(net, sample: Sample, reach_cells: int = REACH_CELLS, turns: int = 1) -> dict:
    """Counts for one sample (summed over samples by `evaluate_samples`); with `turns` > 1 the outputs are
    the mean over that many quarter turns about gravity (`nets.turns`, as the final labels are)."""
    x, targets = make_batch([sample], None)
    cells, feats = x.coordinates.numpy()[:, 1:], x.features.numpy()
    out_cells, probs, sdf_pred, observed = forward_pass(net, cells, feats)
    if turns > 1:
        probs, sdf_pred = turned_mean(functools.partial(forward_pass, net), cells, feats, turns, out_cells, [probs, sdf_pred])
    coords = np.column_stack([np.zeros(len(out_cells), out_cells.dtype), out_cells])
    gt_sem = targets.semantic(coords, observed)
    sem_rows = observed & (gt_sem < EMPTY)
    conf = np.zeros((EMPTY, EMPTY), np.int64)
    np.add.at(conf, (gt_sem[sem_rows], probs[sem_rows, :EMPTY].argmax(1)), 1)

    shape, lo = sample.sdf_cells.shape, sample.box_lo
    surface = np.abs(sample.sdf_cells.astype(np.float32)) < SURFACE_CELLS
    obs = _dense(coords[observed, 1:], lo, shape)
    added_rows = ~observed & (np.abs(sdf_pred) < SURFACE_CELLS) & (probs.argmax(1) != EMPTY)
    added = _dense(coords[added_rows, 1:], lo, shape) & ~obs
    domain = _near(obs, reach_cells)
    gt = surface & domain
    unobs_gt = gt & ~obs
    sdf_gt = targets.sdf_cells(coords)
    return {
        "confusion": conf,
        "comp_inter": int(np.count_nonzero(added & unobs_gt)),
        "comp_union": int(np.count_nonzero((added & domain) | unobs_gt)),
        "sdf_abs_sum": float(np.abs(sdf_pred - sdf_gt).sum()), "sdf_n": len(coords),
        "gt_cells": int(np.count_nonzero(gt)),
        "covered_obs": int(np.count_nonzero(gt & _near(obs, 1))),
        "covered_all": int(np.count_nonzero(gt & _near(obs | added, 1))),
        "added": int(np.count_nonzero(added)),
        "added_good": int(np.count_nonzero(added & _near(surface, 1))),
    }


def summarise(parts: list[dict], voxel_size_m: float = 0.05) -> dict:
    """Scores from summed counts."""
    conf = sum(p["confusion"] for p in parts)
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    scored = present & np.isin(CLASS_IDS[:len(present)], list(SCANNET20))  # the ceiling is not a ScanNet-20 class
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    s = {k: sum(p[k] for p in parts) for k in parts[0] if k != "confusion"}
    return {
        "miou": float(np.nanmean(iou[scored])) if scored.any() else float("nan"),
        "class_iou": {int(i): float(iou[i]) for i in np.nonzero(present)[0]},
        "accuracy": float(tp.sum() / max(1, conf.sum())),
        "completion_iou": s["comp_inter"] / max(1, s["comp_union"]),
        "sdf_l1_m": s["sdf_abs_sum"] / max(1, s["sdf_n"]) * voxel_size_m,
        "coverage_observed": s["covered_obs"] / max(1, s["gt_cells"]),
        "coverage_completed": s["covered_all"] / max(1, s["gt_cells"]),
        "added_precision": s["added_good"] / max(1, s["added"]),
        "samples": len(parts),
    }


def evaluate_samples(net, samples: list[Sample], turns: int = 1) -> dict:
    """Scores of `net` (switched to eval mode, restored after) over samples."""
    was_training = net.training
    net.eval()
    try:
        return summarise([sample_scores(net, s, turns=turns) for s in samples])
    finally:
        net.train(was_training)
