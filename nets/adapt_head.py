"""Owns the semantic-head method of learning from corrections (`AdaptConfig.method == "head"`).

The frozen net runs once over the whole scene (`nets.adapt._prefix`); every site's last features (the
semantic head's input) are then fixed, and only the head (a linear layer, started from the anchor's) is
trained, full batch, on:
- the corrected cells (labeled examples; `correction_weight` in all, each corrected class weighs the same);
- the anchor's confident predictions elsewhere (`head_pseudo_min_conf`), as pseudo-labels (`head_pseudo_weight`
  in all, at most `head_pseudo_cells` of them): the regularisation that keeps the rest of the scene as it was;
- cells that are near copies of a correction's (`look_alike`, `head_propagate`, `head_margin`) take the
  class the user set instead of their pseudo-label (otherwise a look-alike's pseudo-labels, which outweigh
  the corrections, would keep the mistake on it; a loose margin relabels too much: see the config);
- an L2 pull of the head toward the anchor's (`head_anchor_weight`).
A step is one small matrix product over the sampled sites, so a round takes seconds. The head stays an
`nn.Linear` of the same shape: the adapted net is a full weights file. Used by the learning thread.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nets.adapt_config import AdaptConfig
from nets.anchored_steps import anchored_steps
from nets.model import EMPTY


@dataclass(frozen=True)
class HeadTargets:
    """Rows of the scene's sites trained on, their class index and weight (immutable)."""

    rows: np.ndarray
    classes: np.ndarray
    weights: np.ndarray
    propagated: int            #: pseudo-labeled cells relabeled to a correction's class


def look_alike(features: np.ndarray, anchor_cls: np.ndarray, rows: np.ndarray, classes: np.ndarray,
               candidates: np.ndarray, margin: float) -> np.ndarray:
    """(len(candidates),) class each candidate should take from a correction, -1 for none. For each
    (anchor class a -> corrected class c) pair, a candidate the anchor calls a whose features are nearer the
    mean of those corrected cells than `margin` times its distance to the mean of a's uncorrected cells."""
    out = np.full(len(candidates), -1, np.int64)
    best = np.full(len(candidates), np.inf)
    moved = anchor_cls[rows] != classes
    for a, c in {(int(a), int(c)) for a, c in zip(anchor_cls[rows][moved], classes[moved])}:
        shown = rows[moved & (anchor_cls[rows] == a) & (classes == c)]
        sel = np.flatnonzero(anchor_cls[candidates] == a)
        if not len(sel):
            continue
        f = features[candidates[sel]]
        d_c = np.linalg.norm(f - features[shown].mean(0), axis=1)
        d_a = np.linalg.norm(f - f.mean(0), axis=1)
        take = (d_c < margin * d_a) & (d_c < best[sel])
        out[sel[take]], best[sel[take]] = c, d_c[take]
    return out


def head_targets(features: np.ndarray, logits: torch.Tensor, observed: np.ndarray, rows: np.ndarray,
                 classes: np.ndarray, cfg: AdaptConfig, rng: np.random.Generator) -> HeadTargets:
    """Corrected rows (`rows`, `classes`) and the sampled pseudo-labeled ones, with their weights."""
    counts = np.bincount(classes, minlength=EMPTY + 1)
    cw = cfg.correction_weight / (counts[classes] * max(1, np.count_nonzero(counts)))
    conf, arg = torch.softmax(logits, 1).max(1)
    anchor_cls = arg.numpy()
    corrected = np.zeros(len(features), bool)
    corrected[rows] = True
    pool = np.flatnonzero(observed & ~corrected & (conf.numpy() >= cfg.head_pseudo_min_conf) & (anchor_cls != EMPTY))
    if len(pool) > cfg.head_pseudo_cells:
        pool = rng.choice(pool, cfg.head_pseudo_cells, replace=False)
    pseudo = anchor_cls[pool].astype(np.int64)
    moved = look_alike(features, anchor_cls, rows, classes, pool, cfg.head_margin) if cfg.head_propagate \
        else np.full(len(pool), -1)
    pseudo = np.where(moved >= 0, moved, pseudo)
    pw = np.full(len(pool), cfg.head_pseudo_weight / max(len(pool), 1))
    return HeadTargets(np.concatenate([rows, pool]).astype(np.int64), np.concatenate([classes, pseudo]),
                       np.concatenate([cw, pw]).astype(np.float32), int(np.count_nonzero(moved >= 0)))


def train_head(head: torch.nn.Linear, features: np.ndarray, t: HeadTargets, cfg: AdaptConfig, t0: float,
               cancel: threading.Event | None = None,
               progress: Callable[[int, float], None] | None = None) -> dict:
    """Train `head` in place (full batch, Adam) until `head_steps` or the budget; info as `adapt_net`'s."""
    x = torch.from_numpy(np.ascontiguousarray(features[t.rows], np.float32))
    y, w = torch.from_numpy(t.classes), torch.from_numpy(t.weights)
    info = {"steps": 0, "loss": float("nan"), "cancelled": False, "propagated": t.propagated}

    def loss_of():
        return (F.cross_entropy(head(x), y, reduction="none") * w).sum()

    anchored_steps(list(head.parameters()), loss_of, cfg.head_lr, cfg.head_anchor_weight, cfg.head_steps,
                   cfg.budget_s, t0, info, cancel, progress, progress_every=25)
    return info
