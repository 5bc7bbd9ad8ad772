"""Owns the settings of learning from corrections (`nets.adapt`), importable without torch (the app's
configuration holds them even when the nets cannot load). Immutable values: any thread."""
from __future__ import annotations

from dataclasses import dataclass

ADAPTED_WEIGHTS = "adapted_weights"   #: a session's extras key holding the adapted weights file's bytes


@dataclass(frozen=True)
class AdaptConfig:
    """One learning round."""

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
    seed: int = 0                   #: sampling seed (a round is repeatable on one thread)
