"""Owns the settings of learning from corrections (`nets.adapt`), importable without torch (the app's
configuration holds them even when the nets cannot load). Immutable values: any thread."""
from __future__ import annotations

from dataclasses import dataclass

from nets.turns import FINAL_TURNS

ADAPTED_WEIGHTS = "adapted_weights"   #: a session's extras key holding the adapted weights file's bytes


@dataclass(frozen=True)
class AdaptConfig:
    """One learning round."""

    #: "head": only the semantic head learns, on the frozen net's features of the whole scene
    #: (`nets.adapt_head`, seconds); "finetune": the finest decoder levels and the heads learn on sampled
    #: sites (`nets.adapt`, the whole budget). See bench.corrections_bench for what each gains.
    method: str = "head"
    budget_s: float = 30.0          #: wall-time bound of the training steps of one round
    max_steps: int = 300            #: steps at most (a round usually ends on the budget first)
    lr: float = 1e-2                #: Adam learning rate
    anchor_weight: float = 1e-3     #: L2 pull of the trained parameters toward the anchor's (sum of squares)
    pseudo_min_conf: float = 0.7    #: the anchor's predictions at least this confident are pseudo-labels
    pseudo_weight: float = 2.0      #: weight of the pseudo-label loss against the corrections'
    #: weight of pseudo-labels that look like a correction's cells (see nets.adapt); 1: no exception. Measured
    #: (bench.corrections_bench, 30 s): 0 / 0.3 / 1 gave the same real-room gain (+0.016..0.017 after 5
    #: corrections) and synthetic room 1000 after 1 correction -0.037 / -0.028 / -0.019
    away_weight: float = 1.0
    pseudo_cells: int = 2048        #: pseudo-labeled sites trained on in a round (drawn once)
    max_corrected_cells: int = 2048  #: corrected sites trained on at most (drawn once)
    distill_weight: float = 0.5     #: weight of the signed-distance and occupancy distillation to the anchor
    threads: int = 0                #: torch threads while learning (0: leave the process' setting)
    correction_weight: float = 1.0  #: "head": weight of the corrected cells in all (each corrected class the same)
    #: "head": the anchor's predictions at least this confident are pseudo-labels. Measured (bench.corrections_bench
    #: --set head_pseudo_min_conf=0, K = 1 / 5): 0 (every observed cell) against 0.7 gave the real room -0.000 / +0.004
    #: (-0.006 / +0.002), synthetic rooms -0.013..+0.008 / +0.001..+0.004 (-0.028..+0.020 / -0.010..+0.010): fewer
    #: rooms worse after one correction, none past +0.05 either way; but an exact copy of a corrected object no
    #: longer learns the correction (tests/test_adapt.py: 13 % of its cells instead of over 75 %): its cells the
    #: look-alike rule misses are pseudo-labeled with the mistake
    head_pseudo_min_conf: float = 0.7
    head_pseudo_cells: int = 65536  #: "head": pseudo-labeled sites trained on at most (drawn once)
    #: "head": weight of the pseudo-labels in all. Measured (site mIoU on untouched sites, K=1/5): 2 / 10 / 30 / 100
    #: gave synthetic room 1000 -0.052/-0.079, -0.034/-0.020, -0.023/-0.000, -0.013/-0.001, room 1001
    #: -0.092/-0.006, +0.016/+0.008, +0.040/+0.013, +0.035/+0.018; the real room about +0.01 with each. Weighing
    #: each pseudo-labeled class the same instead of each cell was worse (room 1000 K=1 -0.047). Those were without
    #: `relabel_min_conf`; with it at 0.8 (bench.corrections_bench, per-vertex mIoU on untouched vertices, gain K=1/5)
    #: 100 / 30 / 10 / 3 gave room 1000 -0.008/+0.009, -0.006/+0.012, -0.004/+0.016, -0.000/+0.020, room 1001
    #: -0.002/+0.007, -0.001/+0.006, -0.001/+0.007, -0.002/-0.001, room 1002 +0.017/+0.009, +0.021/+0.011,
    #: +0.021/+0.012, +0.016/+0.005, the real room -0.001/+0.006, -0.001/+0.006, -0.002/+0.005, -0.002/+0.001
    head_pseudo_weight: float = 10.0
    #: "head": look-alikes of a correction's cells take its class (nets.adapt_head): cells the anchor calls the
    #: class corrected away from whose features are nearer the corrected cells' mean than `head_margin` times
    #: their distance to their class's mean. Measured (site mIoU, untouched sites): margin 1 took thousands of
    #: cells and lost (synthetic room 1001 after 5 corrections -0.185 against -0.006 without); 0.2 takes only
    #: near copies of the corrected object (none in the benchmark's rooms: the same gains as without)
    head_propagate: bool = True
    head_margin: float = 0.2
    head_steps: int = 300           #: "head": full-batch optimiser steps
    head_lr: float = 1e-2           #: "head": Adam learning rate
    head_anchor_weight: float = 1e-2  #: "head": L2 pull of the head toward the anchor's
    seed: int = 0                   #: sampling seed (a round is repeatable on one thread)
    #: after a round the scene is labeled as the final labels are: each prediction the mean over this many
    #: quarter turns (1: one pass)
    relabel_turns: int = FINAL_TURNS
    #: after a round, a cell whose class the adapted net changes keeps the base's prediction unless the adapted
    #: net gives its new class at least this probability (0: every change stands). Measured (bench.corrections_bench,
    #: head, gain K = 1 / 5): 0 / 0.6 / 0.8 / 0.9 gave synthetic room 1000 -0.028 / -0.019 / -0.008 / -0.008 after
    #: one correction, room 1001 -0.010 / +0.000 / +0.007 / +0.005 after five, the real room +0.002 / +0.005 /
    #: +0.006 / +0.006 after five; 0.8 has the smallest loss after one and the largest sum of gains after five
    relabel_min_conf: float = 0.8
