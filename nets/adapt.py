"""Owns learning from corrections: a bounded learning round of the labeling net on the current scene.

Two methods (`AdaptConfig.method`). "head" (default): the whole scene goes once through the frozen net and
only the semantic head learns, on those fixed features (`nets.adapt_head`; seconds). "finetune", below:
One round takes the whole scene's coarse sites (`scene_region`), the user's corrected cells (from the
label store) and the anchor net (the shipped or session base weights), and trains a copy of the anchor:
- the encoder and the coarse decoder stay frozen (the anchor): their activations are computed once;
  only the finest decoder levels (dec1, gen0, dec0) and the heads learn (`TRAINED`);
- corrected cells are labeled examples (each corrected class weighs the same, however large its region);
- the anchor's own confident predictions elsewhere are pseudo-labels (regularisation); optionally
  (`away_weight` < 1) those that look like a correction's cells weigh less: a cell of a class the user
  corrected away from whose anchor features are closer to the corrected cells' mean than to its class's
  mean (the mistake the user showed); dropping all pseudo-labels of such a class instead turned a whole
  wall into "picture" after one picture was corrected out of it;
- the anchor's signed distance and finest occupancy are distilled (the completion stays as it was) and an
  L2 pull keeps the trained parameters near the anchor's.
A round trains on a fixed sample of corrected and pseudo-labeled sites, recomputing only the part of the
scene those sites' outputs depend on (`_batch`; exact, as a whole-scene pass gives there), so a step costs
a fraction of a whole-scene pass.
A round stops at `budget_s` of wall time (or `max_steps`, or when cancelled). Every round starts from the
anchor with all current corrections, so an undone correction leaves no trace in the next round.
Then the whole scene is relabeled with the adapted net (`relabel`); corrected cells keep their label
(the store's rule). Torch modules here are used by one thread at a time (the learning thread).
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fusion.coarse import CoarseGridConfig, CoarseRegion, all_chunk_keys, chunk_keys_of_cells, coarse_region
from fusion.meshing import find_sorted
from nets.adapt_config import AdaptConfig
from nets.anchored_steps import anchored_steps
from nets.adapt_head import head_targets, train_head
from nets.cells import CLASS_IDS, NO_CORRECTION, pack_cells
from nets.infer import ChunkModel, RegionPrediction
from nets.labels import PREFIX, LabelStore
from nets.model import EMPTY, SemanticCompletionNet, add_skip, site_mask
from nets.sparse import SparseTensor
from nets.sparse.coords import CoordinateSet

log = logging.getLogger(__name__)

TRAINED = ("dec1", "gen0", "dec0", "sem", "sdf")  #: modules that learn; the rest is the frozen anchor
_COLUMN = {int(c): i for i, c in enumerate(CLASS_IDS)}  # NYU40 id -> class index of the net


@dataclass(frozen=True)
class Corrections:
    """The corrected cells of a store (immutable): cells (K,3) int32 and their NYU40 labels (K,) uint16."""

    cells: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.cells)


@dataclass(frozen=True)
class RoundResult:
    """What one round did."""

    steps: int                 #: optimiser steps taken
    learn_s: float             #: wall time of preparing and training
    relabel_s: float           #: wall time of the relabel pass
    corrected_cells: int       #: corrected cells in the store
    trained_cells: int         #: of those, sites of the scene the net saw as examples
    cancelled: bool            #: stopped by the caller: nothing changed
    adapted: bool              #: the net differs from the anchor (False: no corrections, anchor restored)
    loss: float                #: last training loss (nan without training)


def corrections_of(store: LabelStore) -> Corrections:
    """Every corrected cell with a class (label 0 'unlabeled' teaches nothing), from the store's arrays."""
    arrays = store.to_arrays()
    corrected = arrays[f"{PREFIX}corrected"]
    keep = (corrected != NO_CORRECTION) & np.isin(corrected, CLASS_IDS)
    return Corrections(arrays[f"{PREFIX}coords"][keep].astype(np.int32), corrected[keep].astype(np.uint16))


def scene_region(volume, grid: CoarseGridConfig) -> CoarseRegion:
    """The whole scene's coarse sites, every one a core site. Call on the volume's thread."""
    keys = sorted(all_chunk_keys(volume, grid))
    return coarse_region(volume, keys, grid, halo_voxels=0)


RELABEL_FUSES = 3  #: the store keeps `keep_old` (5%) of a cell's evidence per fusion: 3 leave ~1e-4 of it


def relabel(model: ChunkModel, region: CoarseRegion, store: LabelStore, base: ChunkModel | None = None,
            min_conf: float = 0.0) -> set:
    """Predict the whole scene with `model` and make it the store's labels (plain argmax, corrections
    kept): the prediction is fused until the earlier evidence is negligible, so relabeling with the base
    model after an undo gives back the base labels. With `base` and `min_conf`, a cell whose class differs
    from base's keeps base's prediction unless `model` gives its class at least `min_conf`. Returns the
    changed chunk keys."""
    pred = predict_scene(model, region)
    if base is not None and min_conf > 0:
        pred = _gated(pred, predict_scene(base, region), min_conf)
    changed = set()
    for _ in range(RELABEL_FUSES):
        changed |= store.fuse(pred)
    return changed | store.settle(pred.keys)


def _gated(pred: RegionPrediction, base: RegionPrediction, min_conf: float) -> RegionPrediction:
    """`pred`, except at cells `base` also predicts whose class `pred` changes with less than `min_conf`: there
    `base`'s probabilities (a fine-tuned decoder may complete other cells than the base's)."""
    packed = pack_cells(base.coords)
    order = np.argsort(packed, kind="stable")
    at = find_sorted(packed[order], pack_cells(pred.coords))
    rows = order[np.maximum(at, 0)]
    base_probs = base.probs[rows] if len(base) else pred.probs
    keep_base = (at >= 0) & (pred.probs.argmax(1) != base_probs.argmax(1)) & (pred.probs.max(1) < min_conf)
    return replace(pred, probs=np.where(keep_base[:, None], base_probs, pred.probs))


def predict_scene(model: ChunkModel, region: CoarseRegion) -> RegionPrediction:
    keys = tuple(sorted({tuple(k) for k in chunk_keys_of_cells(region.coords, model.grid).tolist()}))
    whole = CoarseRegion(keys, region.coords, region.features, np.ones(len(region), bool), model.grid)
    return model.predict(whole)


@dataclass(frozen=True)
class SceneFeatures:
    """The anchor's view of a whole scene (immutable): output sites (N,3), which are observed (N,), the
    features the semantic head reads (N,C) and the anchor's class probabilities (N,21, "empty" last)."""

    coords: np.ndarray
    observed: np.ndarray
    features: np.ndarray
    probs: np.ndarray


def scene_features(net: SemanticCompletionNet, region: CoarseRegion) -> SceneFeatures:
    """What the "head" method trains on (one pass of the frozen net); for diagnostics (bench.corrections_bench)."""
    p = _prefix(net.eval(), region)
    return SceneFeatures(p.coords, p.observed, p.features, torch.softmax(p.logits, 1).numpy())


# --- the frozen prefix -----------------------------------------------------------------------
@dataclass
class _Prefix:
    """Anchor activations up to the trained levels (no gradients) and the anchor's outputs."""

    x1: SparseTensor           # input of dec1 (L1 sites, stride 2)
    e0: SparseTensor           # encoder L0 features (gen0's skip)
    kept0: np.ndarray          # sorted packed L0 sites the anchor kept after gen0 (= d0's sites)
    gen0_sites: np.ndarray     # sorted packed sites gen0 made (before pruning)
    occ0: np.ndarray           # the anchor's occupancy logit at each of them
    coords: np.ndarray         # (N,3) d0 sites (L0 output)
    observed: np.ndarray       # (N,) bool
    features: np.ndarray       # (N,C) the anchor's last features (what the semantic head reads)
    logits: torch.Tensor       # (N,21) anchor
    sdf: torch.Tensor          # (N,) anchor


def _prefix(net: SemanticCompletionNet, region: CoarseRegion) -> _Prefix:
    x = SparseTensor.from_coords(torch.from_numpy(region.coords), torch.from_numpy(region.features))
    with torch.no_grad():
        e0 = net.stem(x)
        e1 = net.enc1(net.down1(e0))
        e2 = net.enc2(net.down2(e1))
        levels: list = []
        d2 = net._grow(net.grow2(e2), e2, net.occ2, 2, None, levels)
        x1 = net._grow(net.gen1(d2), e1, net.occ1, 1, None, levels)
        d0 = net.dec0(net._grow(net.gen0(net.dec1(x1)), e0, net.occ0, 0, None, levels))
        logits, sdf = net.sem(d0.features), net.sdf(d0.features).squeeze(1)
    coords = d0.coordinates[:, 1:].numpy().astype(np.int32)
    g, occ0, _ = levels[-1]
    packed = pack_cells(g.coordinates[:, 1:].numpy())
    order = np.argsort(packed)
    return _Prefix(x1, e0, np.sort(pack_cells(coords)), packed[order], occ0.numpy()[order], coords,
                   site_mask(d0, x).numpy(), d0.features.numpy(), logits, sdf)


_N27 = np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)], np.int32)
_CHILD = np.array([(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.int32)  # gen0's children


def _among(cells: np.ndarray, sorted_packed: np.ndarray) -> np.ndarray:
    """Rows into `sorted_packed` of each cell, -1 where absent."""
    return find_sorted(sorted_packed, pack_cells(cells))


def _around(cells: np.ndarray) -> np.ndarray:
    """Unique cells of the 3x3x3 neighbourhoods of `cells`."""
    return np.unique((cells[:, None, :] + _N27[None]).reshape(-1, 3), axis=0)


def _sub(x: SparseTensor, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of x, their cells) for the cells that are sites of x (x's coordinate units)."""
    own = x.coordinates[:, 1:].numpy()
    order = np.argsort(pack_cells(own))
    rows = _among(cells, pack_cells(own)[order])
    rows = order[rows[rows >= 0]]
    return rows, own[rows]


@dataclass
class _Batch:
    """The part of the scene the trained levels must recompute for the target sites, exactly: the
    targets' L0 neighbourhoods (dec0 reads them), their L1 parents, and those parents' L1
    neighbourhoods (dec1 reads them). Built once a round; its coordinate sets keep their kernel maps."""

    x1: SparseTensor           # dec1's input on the parents' neighbourhoods
    parent_rows: torch.Tensor  # rows of x1 that are parents (gen0's input)
    parents: CoordinateSet     # their sites
    e0: SparseTensor           # skip at the parents' children
    keep: torch.Tensor         # rows of gen0's output the anchor kept
    x0: CoordinateSet          # those sites
    target_rows: torch.Tensor  # rows of x0 that are the targets, in target order
    occ0: torch.Tensor | None = None  # the anchor's occupancy logits at gen0's output rows


def _batch(p: _Prefix, targets: np.ndarray) -> _Batch:
    cells = p.coords[targets]
    n0 = _around(cells)
    n0 = n0[_among(n0, p.kept0) >= 0]
    parents = np.unique(np.floor_divide(n0, 2), axis=0)
    rows1, cells1 = _sub(p.x1, _around(parents))
    x1 = SparseTensor.from_coords(torch.from_numpy(cells1.astype(np.int32)), p.x1.features[rows1], stride=2)
    order = np.argsort(pack_cells(cells1))
    prow = order[_among(parents, pack_cells(cells1)[order])]
    kids = (parents[:, None, :] * 2 + _CHILD[None]).reshape(-1, 3)
    erows, ecells = _sub(p.e0, kids)
    e0 = SparseTensor.from_coords(torch.from_numpy(ecells.astype(np.int32)), p.e0.features[erows])
    pcs = CoordinateSet(torch.from_numpy(parents.astype(np.int32)), 2)
    return _Batch(x1, torch.from_numpy(prow.astype(np.int64)), pcs, e0, torch.zeros(0), None,
                  torch.from_numpy(cells.astype(np.int32)))



def _suffix(net: SemanticCompletionNet, p: _Prefix, b: _Batch) -> tuple[torch.Tensor, ...]:
    """(logits, sdf) at the batch's targets, recomputed through the trained levels (equal to a whole-scene
    pass there), and the finest occupancy logits with the anchor's."""
    d1 = net.dec1(b.x1)
    g = add_skip(net.gen0(SparseTensor(d1.features[b.parent_rows], b.parents)), b.e0)
    if b.x0 is None:  # first step: the anchor's pruning and the target rows, kept for the round
        gcells = g.coordinates[:, 1:].numpy()
        keep = np.flatnonzero(_among(gcells, p.kept0) >= 0)
        b.keep, b.x0 = torch.from_numpy(keep), CoordinateSet(torch.from_numpy(gcells[keep]), 1)
        order = np.argsort(pack_cells(gcells[keep]))
        rows = order[_among(b.target_rows.numpy(), pack_cells(gcells[keep])[order])]
        b.target_rows = torch.from_numpy(rows.astype(np.int64))
        b.occ0 = torch.from_numpy(p.occ0[_among(gcells, p.gen0_sites)])
    d0 = net.dec0(SparseTensor(g.features[b.keep], b.x0))
    f = d0.features[b.target_rows]
    return net.sem(f), net.sdf(f).squeeze(1), net.occ0(g.features).squeeze(1), b.occ0


# --- targets ---------------------------------------------------------------------------------
@dataclass
class _Targets:
    rows: np.ndarray            # output rows trained on: corrected first, then pseudo-labeled
    classes: torch.Tensor       # class index of each
    weights: torch.Tensor       # weight of each (corrections: each class sums to 1; pseudo: pseudo_weight in all)
    n_corrected: int


def _corrected_rows(p: _Prefix, corr: Corrections) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the scene's observed output sites that are corrected, their NYU40 labels)."""
    rows = _among(corr.cells, p.kept0)
    order = np.argsort(pack_cells(p.coords))
    ok = rows >= 0
    rows, labels = order[rows[ok]], corr.labels[ok]
    keep = p.observed[rows]
    return rows[keep], labels[keep]


def _targets(p: _Prefix, corr: Corrections, cfg: AdaptConfig, rng: np.random.Generator) -> _Targets:
    rows, labels = _corrected_rows(p, corr)
    corrected = np.zeros(len(p.coords), bool)
    corrected[rows] = True
    if len(rows) > cfg.max_corrected_cells:
        pick = rng.choice(len(rows), cfg.max_corrected_cells, replace=False)
        rows, labels = rows[pick], labels[pick]
    classes = np.array([_COLUMN[int(v)] for v in labels], np.int64)
    counts = np.bincount(classes, minlength=EMPTY)
    weights = 1.0 / (counts[classes] * max(1, np.count_nonzero(counts)))
    conf, arg = torch.softmax(p.logits, 1).max(1)
    anchor_cls = arg.numpy()
    pool = np.flatnonzero(p.observed & ~corrected & (conf.numpy() >= cfg.pseudo_min_conf) & (anchor_cls != EMPTY))
    pseudo = rng.choice(pool, min(cfg.pseudo_cells, len(pool)), replace=False) if len(pool) else pool
    pw = np.where(_look_alike(p, rows, classes, anchor_cls, pseudo, pool), cfg.away_weight, 1.0)
    pw = cfg.pseudo_weight * pw / max(pw.sum(), 1e-6)
    all_rows = np.concatenate([rows, pseudo]).astype(np.int64)
    return _Targets(all_rows, torch.from_numpy(np.concatenate([classes, anchor_cls[pseudo]]).astype(np.int64)),
                    torch.from_numpy(np.concatenate([weights, pw]).astype(np.float32)), len(rows))


def _look_alike(p: _Prefix, rows, classes, anchor_cls, pseudo, pool) -> np.ndarray:
    """(len(pseudo),) bool: the pseudo-labeled cell has a class some corrected cells were corrected away
    from, and its features are closer to those corrected cells' mean than to its class's mean."""
    out = np.zeros(len(pseudo), bool)
    moved = anchor_cls[rows] != classes
    for a in np.unique(anchor_cls[rows][moved]):
        mu_c = p.features[rows[moved & (anchor_cls[rows] == a)]].mean(0)
        mu_p = p.features[pool[anchor_cls[pool] == a]].mean(0) if np.any(anchor_cls[pool] == a) else mu_c
        sel = np.flatnonzero(anchor_cls[pseudo] == a)
        f = p.features[pseudo[sel]]
        out[sel] = np.linalg.norm(f - mu_c, axis=1) < np.linalg.norm(f - mu_p, axis=1)
    return out


# --- training --------------------------------------------------------------------------------
def _trained_params(net: SemanticCompletionNet) -> list[torch.nn.Parameter]:
    return [q for n, q in net.named_parameters() if n.split(".")[0] in TRAINED]


def adapt_net(anchor: SemanticCompletionNet, region: CoarseRegion, corr: Corrections,
              cfg: AdaptConfig = AdaptConfig(), cancel: threading.Event | None = None,
              progress: Callable[[int, float], None] | None = None) -> tuple[SemanticCompletionNet, dict]:
    """A copy of `anchor` trained on the corrections (see the module doc); (net, info) with steps,
    seconds, trained cells, last loss and whether it was cancelled. The anchor is not modified."""
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        net = copy.deepcopy(anchor).eval()  # batch norm keeps the anchor's statistics
        for q in net.parameters():
            q.requires_grad_(False)
        rng = np.random.default_rng(cfg.seed)
        p = _prefix(net, region)
        if cfg.method == "head":
            return net, _adapt_head(net, p, corr, cfg, rng, t0, cancel, progress)
        t = _targets(p, corr, cfg, rng)
        info = {"steps": 0, "trained_cells": t.n_corrected, "loss": float("nan"), "cancelled": False}
        if not t.n_corrected:
            return net, info | {"learn_s": time.perf_counter() - t0}
        b = _batch(p, t.rows)
        anchor_sdf = p.sdf[torch.from_numpy(t.rows)]

        def loss_of():
            logits, sdf, occ, anchor_occ = _suffix(net, p, b)
            loss = (F.cross_entropy(logits, t.classes, reduction="none") * t.weights).sum()
            return loss + cfg.distill_weight * (F.l1_loss(sdf, anchor_sdf) + F.l1_loss(occ, anchor_occ))

        anchored_steps(_trained_params(net), loss_of, cfg.lr, cfg.anchor_weight, cfg.max_steps, cfg.budget_s, t0,
                       info, cancel, progress)
        return net, info | {"learn_s": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(old_threads)


def _adapt_head(net: SemanticCompletionNet, p: _Prefix, corr: Corrections, cfg: AdaptConfig,
                rng: np.random.Generator, t0: float, cancel, progress) -> dict:
    """The "head" method (`nets.adapt_head`): trains `net.sem` in place on the fixed features."""
    rows, labels = _corrected_rows(p, corr)
    info = {"steps": 0, "trained_cells": len(rows), "loss": float("nan"), "cancelled": False}
    if len(rows):
        classes = np.array([_COLUMN[int(v)] for v in labels], np.int64)
        t = head_targets(p.features, p.logits, p.observed, rows, classes, cfg, rng)
        info |= train_head(net.sem, p.features, t, cfg, t0, cancel, progress)
        log.info("head round: %d corrected sites, %d pseudo-labeled (%d took a correction's class), %d steps",
                 len(rows), len(t.rows) - len(rows), t.propagated, info["steps"])
    return info | {"learn_s": time.perf_counter() - t0}


# --- the learner -----------------------------------------------------------------------------
class CorrectionLearner:
    """The anchor (base) model of one scan and the model its labels come from now (the adapted one
    after a round with corrections). `learn` runs on one thread at a time (the GUI's learning thread,
    or the command line's); `model` may be read from any thread (it is replaced, never modified)."""

    def __init__(self, base: ChunkModel, config: AdaptConfig = AdaptConfig()):
        self.base = base
        self.config = config
        self.model = base          #: the model whose labels the scene shows
        self.adapted = False       #: model differs from the base
        self.last: RoundResult | None = None

    def use_adapted(self, model: ChunkModel) -> None:
        """Adopt weights adapted earlier (a loaded session's)."""
        self.model, self.adapted = model, True

    def learn(self, region: CoarseRegion, store: LabelStore, cancel: threading.Event | None = None,
              progress: Callable[[int, float], None] | None = None) -> RoundResult:
        """One round: train from the base on the store's corrections, then relabel the scene with the
        result (with the base when there are none). Cancelled: nothing changes."""
        corr = corrections_of(store)
        steps, learn_s, loss, trained = 0, 0.0, float("nan"), 0
        model, adapted = self.base, False
        if len(corr):
            net, info = adapt_net(self.base.net, region, corr, self.config, cancel, progress)
            steps, learn_s, loss, trained = info["steps"], info["learn_s"], info["loss"], info["trained_cells"]
            if info["cancelled"]:
                return self._done(RoundResult(steps, learn_s, 0.0, len(corr), trained, True, self.adapted, loss))
            model, adapted = ChunkModel(net, self.base.grid, weights_path=None), trained > 0
            if not adapted:
                model = self.base
        t0 = time.perf_counter()
        turns = self.config.relabel_turns
        relabel(model.with_turns(turns), region, store, self.base.with_turns(turns) if adapted else None,
                self.config.relabel_min_conf)
        self.model, self.adapted = model, adapted
        return self._done(RoundResult(steps, learn_s, time.perf_counter() - t0, len(corr), trained, False,
                                      adapted, loss))

    def _done(self, result: RoundResult) -> RoundResult:
        self.last = result
        log.info("learning round: %d corrected cells (%d trained), %d steps in %.1f s, relabel %.1f s%s",
                 result.corrected_cells, result.trained_cells, result.steps, result.learn_s, result.relabel_s,
                 ", cancelled" if result.cancelled else "")
        return result
